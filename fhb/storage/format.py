"""Lake format v1: constants, names, the root-attribute schema (`LakeMeta`) and frame arithmetic.

A lake is a Zarr v3 group. Its root attributes are ``LakeMeta.to_dict()``; everything a reader
needs (layers, dtype, codec, chunking) is recorded there, so reading needs no flags. The full
layout is written down in ``docs/lake-format.md``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fhb.errors import FhbError
from fhb.storage.codecs import DTYPES, TargetCodec

logger = logging.getLogger(__name__)

FORMAT_NAME = "fhb-lake"
FORMAT_VERSION = 1
FRAME_RATE = 50
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAME_RATE  # 320: the teacher's total conv stride

# Names inside a shard group.
AUDIO_ARRAY = "audio"
CNN_ARRAY = "cnn"
SCALE_SUFFIX = "_scale"
TMP_PREFIX = "_tmp_"
TRASH_PREFIX = "_trash_"
LOCK_FILE = ".fhb.lock"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

FramesFn = Callable[[int], int]
"""Samples -> frames of the teacher's conv stack (see `fhb.nn.frames.conv_output_length`)."""


def layer_array_name(layer: int) -> str:
    """Array name of teacher layer ``layer`` (1-based, teacher numbering): ``layer_03``."""
    return f"layer_{layer:02d}"


def scale_array_name(array_name: str) -> str:
    """Name of the int8 scale/offset array that belongs to ``array_name``."""
    return array_name + SCALE_SUFFIX


def check_name(kind: str, name: str) -> str:
    """Validate a split or shard name (one path component, no leading ``_`` or ``.``)."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise FhbError(
            f"{kind} name {name!r}: expected letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (names starting with '_' are reserved for temporary shards); "
            f"rename the {kind}"
        )
    return name


@dataclass(frozen=True)
class TeacherMeta:
    """The teacher that produced the targets.

    ``config`` is the architecture config as a plain JSON-able dict (e.g. fairseq's ``cfg.model``);
    ``num_layers`` transformer layers of width ``dim``.
    """

    name: str
    sha256: str
    config: dict[str, Any]
    num_layers: int
    dim: int
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``teacher`` root attribute)."""
        return {
            "name": self.name,
            "sha256": self.sha256,
            "config": dict(self.config),
            "num_layers": self.num_layers,
            "dim": self.dim,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "teacher") -> TeacherMeta:
        """Parse and validate the ``teacher`` attribute."""
        _require_keys(d, ("name", "sha256", "config", "num_layers", "dim"), where)
        return cls(
            name=_typed(d, "name", str, where),
            sha256=_typed(d, "sha256", str, where),
            config=_typed(d, "config", dict, where),
            num_layers=_typed(d, "num_layers", int, where),
            dim=_typed(d, "dim", int, where),
            path=d.get("path"),
        )

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.dim < 1:
            raise FhbError(
                f"teacher {self.name!r}: expected num_layers >= 1 and dim >= 1, found "
                f"num_layers={self.num_layers}, dim={self.dim}; fix the teacher config"
            )


@dataclass(frozen=True)
class SplitInfo:
    """Listing of one split: its committed shards in manifest order and their totals."""

    shards: tuple[str, ...] = ()
    utterances: int = 0
    samples: int = 0
    frames: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (one entry of the ``splits`` root attribute)."""
        return {
            "shards": list(self.shards),
            "utterances": self.utterances,
            "samples": self.samples,
            "frames": self.frames,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> SplitInfo:
        """Parse and validate one split listing."""
        _require_keys(d, ("shards", "utterances", "samples", "frames"), where)
        shards = _typed(d, "shards", list, where)
        for s in shards:
            check_name("shard", s)
        return cls(
            shards=tuple(shards),
            utterances=_typed(d, "utterances", int, where),
            samples=_typed(d, "samples", int, where),
            frames=_typed(d, "frames", int, where),
        )


@dataclass(frozen=True)
class LakeMeta:
    """Root attributes of a lake (format version 1).

    ``teacher`` and the ``splits`` values may also be given as their plain dicts. ``layers`` are
    teacher layer numbers (1..``teacher.num_layers``, sorted, unique); each is
    stored as array ``layer_{k:02d}`` of shape ``T x teacher.dim``. ``cnn_features`` adds an array
    ``cnn`` (``T x cnn_dim``). ``dtype`` is the target encoding and ``codec`` its parameters
    (`TargetCodec.to_dict`): chunking, compressor, int8 scale block.
    """

    teacher: TeacherMeta
    layers: tuple[int, ...]
    dtype: str = "float16"
    codec: dict[str, Any] = field(default_factory=dict)
    cnn_features: bool = False
    cnn_dim: int | None = None
    frame_rate: int = FRAME_RATE
    sample_rate: int = SAMPLE_RATE
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    fhb_version: str = ""
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        # Normalise (frozen: go through object.__setattr__) and validate once.
        if not self.fhb_version:
            from fhb import __version__

            object.__setattr__(self, "fhb_version", __version__)
        if isinstance(self.teacher, Mapping):  # accept the plain-dict form too
            object.__setattr__(self, "teacher", TeacherMeta.from_dict(self.teacher))
        object.__setattr__(
            self,
            "splits",
            {
                k: v if isinstance(v, SplitInfo) else SplitInfo.from_dict(v, f"split {k!r}")
                for k, v in self.splits.items()
            },
        )
        object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))
        if self.dtype not in DTYPES:
            raise FhbError(
                f"lake dtype: expected one of {list(DTYPES)}, found {self.dtype!r}; pick one of those"
            )
        if not self.codec:
            object.__setattr__(self, "codec", TargetCodec.default(self.dtype).to_dict())
        self._validate()

    def _validate(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise FhbError(
                f"lake metadata: expected format_version {FORMAT_VERSION}, found "
                f"{self.format_version}; build LakeMeta with format_version={FORMAT_VERSION}"
            )
        n = self.teacher.num_layers
        if not self.layers or list(self.layers) != sorted(set(self.layers)) or not all(
            1 <= k <= n for k in self.layers
        ):
            raise FhbError(
                f"stored layers: expected a non-empty, sorted list of unique teacher layers in "
                f"1..{n}, found {list(self.layers)}; fix the layer selection"
            )
        if self.cnn_features and (self.cnn_dim is None or self.cnn_dim < 1):
            raise FhbError(
                f"cnn_features is true: expected cnn_dim >= 1, found {self.cnn_dim}; pass the "
                f"teacher's CNN feature width (post_extract_proj output, e.g. 768)"
            )
        if not self.cnn_features and self.cnn_dim is not None:
            raise FhbError(
                f"cnn_features is false: expected cnn_dim None, found {self.cnn_dim}; drop cnn_dim "
                f"or set cnn_features"
            )
        if self.sample_rate % self.frame_rate:
            raise FhbError(
                f"sample_rate {self.sample_rate} / frame_rate {self.frame_rate}: expected an integer "
                f"number of samples per frame; fix the rates"
            )
        codec = TargetCodec.from_dict(self.codec)
        if codec.dtype != self.dtype:
            raise FhbError(
                f"lake codec: expected encoding for dtype {self.dtype!r}, found {codec.dtype!r}; "
                f"build the codec with TargetCodec.default({self.dtype!r})"
            )
        for name in self.splits:
            check_name("split", name)

    @property
    def target_codec(self) -> TargetCodec:
        """The parsed `TargetCodec` for ``codec``."""
        return TargetCodec.from_dict(self.codec)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per target frame (320 at 16 kHz / 50 Hz)."""
        return self.sample_rate // self.frame_rate

    @property
    def target_arrays(self) -> tuple[str, ...]:
        """Names of the target arrays of a shard: the layers, then ``cnn`` if stored."""
        names = tuple(layer_array_name(k) for k in self.layers)
        return names + ((CNN_ARRAY,) if self.cnn_features else ())

    def layout_key(self) -> dict[str, Any]:
        """The fields two writers of one lake must agree on (compared on resume)."""
        return {
            "teacher.sha256": self.teacher.sha256,
            "teacher.dim": self.teacher.dim,
            "layers": list(self.layers),
            "dtype": self.dtype,
            "codec": self.codec,
            "cnn_features": self.cnn_features,
            "cnn_dim": self.cnn_dim,
            "frame_rate": self.frame_rate,
            "sample_rate": self.sample_rate,
        }

    def layout_differences(self, other: LakeMeta) -> list[str]:
        """``"field: A != B"`` for every layout field where ``self`` and ``other`` differ."""
        a, b = self.layout_key(), other.layout_key()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]

    def with_split(self, name: str, info: SplitInfo) -> LakeMeta:
        """A copy whose ``splits[name]`` is ``info``."""
        splits = dict(self.splits)
        splits[name] = info
        return replace(self, splits=splits)

    def to_dict(self) -> dict[str, Any]:
        """The root attributes (JSON-able)."""
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "fhb_version": self.fhb_version,
            "teacher": self.teacher.to_dict(),
            "layers": list(self.layers),
            "cnn_features": self.cnn_features,
            "cnn_dim": self.cnn_dim,
            "dtype": self.dtype,
            "codec": self.codec,
            "frame_rate": self.frame_rate,
            "sample_rate": self.sample_rate,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "lake") -> LakeMeta:
        """Parse and validate root attributes; refuses other format versions with the fix."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT_NAME:
            found = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise FhbError(
                f"{where}: expected root attribute format={FORMAT_NAME!r}, found {found!r}; this "
                f"is not an fhb lake: point at a directory written by `fhb extract`"
            )
        version = d.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise FhbError(
                f"{where}: expected an integer format_version, found {version!r}; the lake's "
                f"root zarr.json is damaged: re-run `fhb extract` into a new lake"
            )
        if version > FORMAT_VERSION:
            raise FhbError(
                f"{where} was written by format version {version}; this fhb reads version "
                f"{FORMAT_VERSION}: upgrade fhb"
            )
        if version < FORMAT_VERSION:
            raise FhbError(
                f"{where} was written by format version {version}; this fhb reads version "
                f"{FORMAT_VERSION}: re-extract the lake with this fhb"
            )
        keys = ("fhb_version", "teacher", "layers", "cnn_features", "cnn_dim", "dtype", "codec",
                "frame_rate", "sample_rate", "splits")
        _require_keys(d, keys, where)
        splits = _typed(d, "splits", dict, where)
        return cls(
            format_version=version,
            fhb_version=_typed(d, "fhb_version", str, where),
            teacher=TeacherMeta.from_dict(_typed(d, "teacher", dict, where), f"{where}: teacher"),
            layers=tuple(_typed(d, "layers", list, where)),
            cnn_features=_typed(d, "cnn_features", bool, where),
            cnn_dim=d["cnn_dim"],
            dtype=_typed(d, "dtype", str, where),
            codec=_typed(d, "codec", dict, where),
            frame_rate=_typed(d, "frame_rate", int, where),
            sample_rate=_typed(d, "sample_rate", int, where),
            splits={
                k: SplitInfo.from_dict(v, f"{where}: split {k!r}") for k, v in splits.items()
            },
        )


def _require_keys(d: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise FhbError(
            f"{where}: expected keys {list(keys)}, missing {missing}; the metadata is incomplete "
            f"or from another tool: re-run `fhb extract` into a new lake"
        )


def _typed(d: Mapping[str, Any], key: str, typ: type, where: str) -> Any:
    value = d[key]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if not ok:
        raise FhbError(
            f"{where}: expected {key!r} of type {typ.__name__}, found {type(value).__name__} "
            f"({value!r:.80}); the metadata is damaged: re-run `fhb extract` into a new lake"
        )
    return value


def hours(num_samples: int, sample_rate: int = SAMPLE_RATE) -> float:
    """Audio duration in hours."""
    return num_samples / sample_rate / 3600.0


def num_chunks(length: int, chunk: int) -> int:
    """Number of chunks of size ``chunk`` covering ``length`` elements."""
    return math.ceil(length / chunk) if length else 0
