"""The lake's on-disk contract (format v1; shards in format 1 or 2), in one place.

Everything a writer, the verifier and the readers must agree on is defined here and nowhere
else: names and constants, the root attributes (`LakeMeta`, `TeacherMeta`, `SplitInfo`), a
shard's attributes (`ShardAttrs`, with symmetric `ShardAttrs.to_attrs` / `ShardAttrs.from_attrs`
and its `ShardIndex`), the arrays of a shard (`shard_arrays`), the commit marker
(`is_committed`), unique utterance ids within a split (`duplicate_ids`), the frame rule (frames
from samples by the lake's teacher conv stack, `TeacherMeta.num_frames`), the checksums that
bind every stored chunk, array ``zarr.json`` and index to its place (`chunk_checksum`,
`metadata_checksum`, `index_checksum`, checked through `ShardAttrs`; shard format versions in
`SHARD_FORMAT_VERSION`; the legacy `crc32`), and the stored teacher (`StoredTeacher` in
``_teacher/teacher.json``, recorded in the root as `TeacherWeights`). Adding a stored thing is a change here (plus the writer that fills it).

::

    LAKE/zarr.json                          root group, attrs = LakeMeta.to_dict()
    LAKE/.fhb.lock                          client lock (lock.py), only while extracting
    LAKE/<split>/zarr.json                  split group (no attrs)
    LAKE/<split>/<shard>/zarr.json          shard group, attrs = ShardAttrs.to_attrs()
    LAKE/<split>/<shard>/<array>/           the arrays of `shard_arrays`
    LAKE/<split>/_tmp_<shard>_<hex>/        shard being written (invisible to readers)
    LAKE/<split>/_trash_<shard>_<hex>/      previous version of a shard being replaced
    LAKE/_teacher/model.safetensors         the teacher's weights (optional, `StoredTeacher`)
    LAKE/_teacher/teacher.json              what rebuilds it, StoredTeacher.to_dict()
    LAKE/_tmp_teacher_<hex>/                stored teacher being written (invisible to readers)
    LAKE/_codecs/<array>/<param>/           fitted codec parameters (pca/pq lakes, `FittedSpec`)

The full layout is written down in ``docs/lake-format.md``. numpy only (no zarr, no torch).
"""

from __future__ import annotations

import json
import logging
import math
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fhb.errors import FhbError
from fhb import locks as _locks
from fhb.nn.frames import HUBERT_CONV_LAYERS, ConvSpec, conv_output_length, parse_conv_layers
from fhb.storage.codecs import DTYPES, FITTED_DTYPES, TargetCodec
from fhb.storage.crc32c import crc32c

logger = logging.getLogger(__name__)

FORMAT_NAME = "fhb-lake"
FORMAT_VERSION = 1
FRAME_RATE = 50
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FRAME_RATE  # 320: the teacher's total conv stride

# Files and directories.
ZARR_JSON = "zarr.json"
LOCK_FILE = _locks.LOCK_FILE  # the lake's lock follows fhb.locks' one rule
TMP_PREFIX = "_tmp_"
TRASH_PREFIX = "_trash_"

# Arrays of a shard group.
AUDIO_ARRAY = "audio"
CNN_ARRAY = "cnn"
SCALE_SUFFIX = "_scale"

# Attributes of a shard group.
SHARD_ATTR = "fhb_shard"
COMMITTED_ATTR = "committed"
INDEX_COLUMNS = (
    "utt_id",
    "speaker",
    "chapter",
    "transcript",
    "num_samples",
    "num_frames",
    "sample_offset",
    "frame_offset",
)
CTC_LABELS_COLUMN = "ctc_labels"
"""Optional index column of a lake whose teacher is a fine-tuned CTC model (``teacher.ctc_vocab``):
per utterance, the teacher's greedy CTC labels (`fhb.storage.ctc_labels.collapse`)."""

# Shard format versions (``fhb_shard.format_version``; the root's `FORMAT_VERSION` is unchanged,
# so one lake may hold shards of both): 1 = the legacy checksums, crc32 of each chunk's decoded
# values; 2 = crc32c of each chunk's stored (compressed) bytes bound to where the chunk belongs
# (`chunk_checksum`), of each array's ``zarr.json`` (`metadata_checksum`) and of the index
# (`index_checksum`). Readers accept both, and refuse newer versions ("upgrade fhb").
SHARD_FORMAT_VERSION = 2
LEGACY_SHARD_FORMAT = 1
CHECKSUM_ALGORITHM = "crc32c"
CHECKSUM_UNIT = "stored-chunk"
CHECKSUM_BINDING = "split/shard/array/chunk"
LEGACY_CHECKSUM_ALGORITHM = "crc32"
LEGACY_CHECKSUM_UNIT = "chunk"
_CHECKSUM_KIND = {LEGACY_SHARD_FORMAT: (LEGACY_CHECKSUM_ALGORITHM, LEGACY_CHECKSUM_UNIT),
                  SHARD_FORMAT_VERSION: (CHECKSUM_ALGORITHM, CHECKSUM_UNIT)}

# The stored teacher (optional): LAKE/_teacher/{model.safetensors, teacher.json}.
TEACHER_DIR = "_teacher"
TEACHER_WEIGHTS_FILE = "model.safetensors"
TEACHER_CONFIG_FILE = "teacher.json"
TEACHER_ATTR = "teacher_weights"
TEACHER_FORMAT = "fhb-teacher"
TEACHER_FORMAT_VERSION = 1
TEACHER_TMP_PREFIX = f"{TMP_PREFIX}teacher_"
TEACHER_TRASH_PREFIX = f"{TRASH_PREFIX}teacher_"

# Fitted codecs (pca/pq lakes): LAKE/_codecs/<array>/<param>, recorded in the root as `FittedSpec`.
CODECS_DIR = "_codecs"
FITTED_ATTR = "fitted_codecs"
FITTED_KINDS: dict[str, type] = {"pca": np.int8, "pq": np.uint8, "klt": np.uint8}
"""Fitted codec kind -> numpy dtype of its stored codes."""
FITTED_PARAMS: dict[str, tuple[str, ...]] = {"pca": ("basis", "mean", "scale"), "pq": ("centroids", "mean"),
                                             "klt": ("basis", "mean", "scale")}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

FramesFn = Callable[[int], int]
"""Samples -> frames of the teacher's conv stack (see `TeacherMeta.num_frames`)."""


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
    ``num_layers`` transformer layers of width ``dim``. ``ctc_vocab``: a fine-tuned CTC teacher's
    output symbols (id -> symbol; the shards' index then has the `CTC_LABELS_COLUMN`); None for a
    pre-trained teacher (and in lakes written before fhb read CTC teachers).
    """

    name: str
    sha256: str
    config: dict[str, Any]
    num_layers: int
    dim: int
    path: str | None = None
    ctc_vocab: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``teacher`` root attribute; ``ctc_vocab`` only when set)."""
        d = {
            "name": self.name,
            "sha256": self.sha256,
            "config": dict(self.config),
            "num_layers": self.num_layers,
            "dim": self.dim,
            "path": self.path,
        }
        if self.ctc_vocab is not None:
            d["ctc_vocab"] = list(self.ctc_vocab)
        return d

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
            ctc_vocab=tuple(str(s) for s in _typed(d, "ctc_vocab", list, where)) if d.get("ctc_vocab") is not None
            else None,
        )

    def __post_init__(self) -> None:
        if self.num_layers < 1 or self.dim < 1:
            raise FhbError(
                f"teacher {self.name!r}: expected num_layers >= 1 and dim >= 1, found "
                f"num_layers={self.num_layers}, dim={self.dim}; fix the teacher config"
            )
        self.conv_layers  # noqa: B018  # refuse an unparsable conv stack now, not on first read

    @property
    def conv_layers(self) -> list[ConvSpec]:
        """The teacher's conv stack: its config's ``conv_feature_layers``, else HuBERT's."""
        spec = self.config.get("conv_feature_layers")
        if spec is None:
            return list(HUBERT_CONV_LAYERS)
        try:
            return parse_conv_layers(spec)
        except (ValueError, TypeError) as exc:
            raise FhbError(
                f"teacher {self.name!r}: expected config.conv_feature_layers like "
                f"'[(512, 10, 5)] + [(512, 3, 2)] * 4', found {spec!r:.80} ({exc}); the lake's "
                f"teacher metadata is damaged: re-extract the lake"
            ) from None

    def num_frames(self, num_samples: int) -> int:
        """Frames the teacher produces for ``num_samples`` samples: the lake's one frame rule
        (writer, verifier, loader and epoch planning all use it)."""
        return conv_output_length(num_samples, self.conv_layers)


def json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-able entries (strings, numbers, booleans, null, lists) of a checkpoint's model
    config: what the lake stores as ``teacher.config`` and in ``teacher.json``."""
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None), list))}


@dataclass(frozen=True)
class TeacherWeights:
    """The root attribute ``teacher_weights``: the lake stores its teacher's weights.

    Absent (or null) in a lake without them (lakes written before fhb stored the teacher). Set by
    the client holding the lock once ``_teacher/`` is in place: it is the stored teacher's commit
    marker. ``sha256`` and ``bytes`` are those of ``_teacher/model.safetensors``;
    ``source_sha256`` is the sha256 of the checkpoint file they came from, which must be the
    lake's ``teacher.sha256``.
    """

    sha256: str
    bytes: int
    source_sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the ``teacher_weights`` root attribute)."""
        return {"dir": TEACHER_DIR, "file": TEACHER_WEIGHTS_FILE, "sha256": self.sha256,
                "bytes": self.bytes, "source_sha256": self.source_sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "teacher_weights") -> TeacherWeights:
        """Parse and validate the ``teacher_weights`` attribute."""
        _require_keys(d, ("sha256", "bytes", "source_sha256"), where)
        return cls(sha256=_typed(d, "sha256", str, where), bytes=_typed(d, "bytes", int, where),
                   source_sha256=_typed(d, "source_sha256", str, where))


@dataclass(frozen=True)
class StoredTeacher:
    """``LAKE/_teacher/teacher.json``: what rebuilds the teacher from ``model.safetensors``.

    ``model.safetensors`` holds the backbone's state dict with fairseq's names, exactly the tensors
    fhb's teacher loads (pre-training-only tensors dropped), in their checkpoint dtype (float32).
    ``model_name`` (``hubert``/``wav2vec2``), ``normalize`` (the task's waveform normalisation)
    and ``config`` (the fairseq model config, `json_config`) are what ``fhb.pipeline.teacher``
    needs besides the weights. ``source_*`` name the checkpoint file; ``weights_*`` describe
    ``model.safetensors`` (its sha256, bytes and number of tensors).
    """

    model_name: str
    normalize: bool
    config: dict[str, Any]
    source_name: str
    source_sha256: str
    weights_sha256: str
    weights_bytes: int
    num_tensors: int
    dtype: str = "float32"
    fhb_version: str = ""
    format_version: int = TEACHER_FORMAT_VERSION

    def __post_init__(self) -> None:
        if not self.fhb_version:
            from fhb import __version__

            object.__setattr__(self, "fhb_version", __version__)

    @property
    def weights(self) -> TeacherWeights:
        """The root attribute that records this stored teacher."""
        return TeacherWeights(self.weights_sha256, self.weights_bytes, self.source_sha256)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (the content of ``teacher.json``)."""
        return {
            "format": TEACHER_FORMAT,
            "format_version": self.format_version,
            "fhb_version": self.fhb_version,
            "model_name": self.model_name,
            "normalize": self.normalize,
            "config": dict(self.config),
            "source_name": self.source_name,
            "source_sha256": self.source_sha256,
            "weights_file": TEACHER_WEIGHTS_FILE,
            "weights_sha256": self.weights_sha256,
            "weights_bytes": self.weights_bytes,
            "num_tensors": self.num_tensors,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = TEACHER_CONFIG_FILE) -> StoredTeacher:
        """Parse and validate ``teacher.json``; refuses other formats and versions with the fix."""
        if not isinstance(d, Mapping) or d.get("format") != TEACHER_FORMAT:
            found = d.get("format") if isinstance(d, Mapping) else type(d).__name__
            raise FhbError(f"{where}: expected format {TEACHER_FORMAT!r}, found {found!r}; store the "
                           f"teacher again with `fhb lake add-teacher LAKE --teacher CKPT`")
        if d.get("format_version") != TEACHER_FORMAT_VERSION:
            raise FhbError(f"{where}: expected format_version {TEACHER_FORMAT_VERSION}, found "
                           f"{d.get('format_version')!r}; upgrade fhb, or store the teacher again")
        types = {"model_name": str, "normalize": bool, "config": dict, "source_name": str, "source_sha256": str,
                 "weights_sha256": str, "weights_bytes": int, "num_tensors": int, "dtype": str, "fhb_version": str}
        _require_keys(d, tuple(types), where)
        return cls(**{key: _typed(d, key, typ, where) for key, typ in types.items()})


def fitted_param_path(array: str, param: str) -> str:
    """Store path of fitted parameter ``param`` of target array ``array``: ``_codecs/layer_03/basis``."""
    return f"{CODECS_DIR}/{array}/{param}"


def param_info(a: np.ndarray) -> dict[str, Any]:
    """``{"shape", "dtype", "sha256"}`` of a fitted parameter (sha256 of its little-endian C-order bytes)."""
    import hashlib

    a = np.ascontiguousarray(a)
    return {"shape": list(a.shape), "dtype": str(a.dtype),
            "sha256": hashlib.sha256(memoryview(a.astype(a.dtype.newbyteorder("<"))).cast("B")).hexdigest()}


@dataclass(frozen=True)
class FittedSpec:
    """What the root attribute ``fitted_codecs[array]`` records of one array's fitted codec.

    ``kind`` (``pca``/``pq``, `FITTED_KINDS`), ``width`` (codes per frame: the stored array is
    ``T x width``), ``dim`` (decoded width ``D``), ``rel_rms`` (relative RMS error measured on the
    held-out frames of the fitting sample), ``budget`` (the error budget it was fitted for) and ``params``
    (``{name: {"shape", "dtype", "sha256"}}``, `param_info`) of the arrays at `fitted_param_path`.
    """

    kind: str
    width: int
    dim: int
    rel_rms: float
    budget: float
    params: dict[str, dict[str, Any]]

    def __post_init__(self) -> None:
        if self.kind not in FITTED_KINDS or self.width < 1 or self.dim < 1:
            raise FhbError(f"fitted codec: expected kind in {list(FITTED_KINDS)}, width >= 1 and dim >= 1, found "
                           f"{self.kind!r}, {self.width}, {self.dim}; the lake's metadata is damaged: re-extract it")
        if sorted(self.params) != sorted(FITTED_PARAMS[self.kind]):
            raise FhbError(f"fitted codec {self.kind}: expected parameters {list(FITTED_PARAMS[self.kind])}, found "
                           f"{sorted(self.params)}; the lake's metadata is damaged: re-extract it")

    @property
    def code_dtype(self) -> np.dtype:
        """numpy dtype of the stored codes."""
        return np.dtype(FITTED_KINDS[self.kind])

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (one entry of the ``fitted_codecs`` root attribute)."""
        return {"kind": self.kind, "width": self.width, "dim": self.dim, "rel_rms": self.rel_rms,
                "budget": self.budget, "params": {k: dict(v) for k, v in self.params.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> FittedSpec:
        """Parse one ``fitted_codecs`` entry."""
        _require_keys(d, ("kind", "width", "dim", "rel_rms", "budget", "params"), where)
        return cls(kind=_typed(d, "kind", str, where), width=_typed(d, "width", int, where),
                   dim=_typed(d, "dim", int, where), rel_rms=float(d["rel_rms"]), budget=float(d["budget"]),
                   params={k: dict(v) for k, v in _typed(d, "params", dict, where).items()})


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

    ``teacher``, ``teacher_weights`` and the ``splits`` values may also be given as their plain
    dicts. ``teacher_weights`` is set when the lake stores the teacher's weights (`TeacherWeights`;
    optional: None in lakes written without them). ``layers`` are
    teacher layer numbers (1..``teacher.num_layers``, sorted, unique); each is
    stored as array ``layer_{k:02d}`` of shape ``T x teacher.dim``. ``cnn_features`` adds an array
    ``cnn`` (``T x cnn_dim``). ``dtype`` is the target encoding and ``codec`` its parameters
    (chunking, compressor, int8 scale block) as a `TargetCodec` (None, or its ``to_dict`` form,
    are accepted when constructing: None means ``TargetCodec.default(dtype)``).
    """

    teacher: TeacherMeta
    layers: tuple[int, ...]
    dtype: str = "float16"
    codec: TargetCodec = None  # type: ignore[assignment]  # None -> TargetCodec.default(dtype)
    cnn_features: bool = False
    cnn_dim: int | None = None
    frame_rate: int = FRAME_RATE
    sample_rate: int = SAMPLE_RATE
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    fhb_version: str = ""
    format_version: int = FORMAT_VERSION
    teacher_weights: TeacherWeights | None = None
    fitted: dict[str, FittedSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalise (frozen: go through object.__setattr__) and validate once.
        if not self.fhb_version:
            from fhb import __version__

            object.__setattr__(self, "fhb_version", __version__)
        if isinstance(self.teacher, Mapping):  # accept the plain-dict form too
            object.__setattr__(self, "teacher", TeacherMeta.from_dict(self.teacher))
        if isinstance(self.teacher_weights, Mapping):
            object.__setattr__(self, "teacher_weights", TeacherWeights.from_dict(self.teacher_weights))
        object.__setattr__(
            self,
            "splits",
            {
                k: v if isinstance(v, SplitInfo) else SplitInfo.from_dict(v, f"split {k!r}")
                for k, v in self.splits.items()
            },
        )
        object.__setattr__(self, "layers", tuple(int(k) for k in self.layers))
        object.__setattr__(self, "fitted", {
            k: v if isinstance(v, FittedSpec) else FittedSpec.from_dict(v, f"{FITTED_ATTR}[{k!r}]")
            for k, v in (self.fitted or {}).items()
        })
        if self.dtype not in DTYPES + FITTED_DTYPES:
            raise FhbError(
                f"lake dtype: expected one of {list(DTYPES + FITTED_DTYPES)}, found {self.dtype!r}; pick one of those"
            )
        if self.codec is None:
            object.__setattr__(self, "codec", TargetCodec.default(self.dtype))
        elif isinstance(self.codec, Mapping):  # accept the plain-dict form too
            object.__setattr__(self, "codec", TargetCodec.from_dict(self.codec))
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
        if not isinstance(self.codec, TargetCodec):
            raise ValueError(f"LakeMeta.codec: expected a TargetCodec, found {type(self.codec).__name__}")
        if self.codec.dtype != self.dtype:
            raise FhbError(
                f"lake codec: expected encoding for dtype {self.dtype!r}, found {self.codec.dtype!r}; "
                f"build the codec with TargetCodec.default({self.dtype!r})"
            )
        for name in self.splits:
            check_name("split", name)
        self._validate_fitted()

    def _validate_fitted(self) -> None:
        if self.dtype in FITTED_DTYPES and self.cnn_features:
            raise FhbError(f"lake dtype {self.dtype}: expected no CNN features (fitted codecs encode the layers "
                           f"only), found cnn_features; extract CNN features into a float16 lake")
        want = set(self.target_arrays) if self.dtype in FITTED_DTYPES else set()
        if set(self.fitted) != want or any(
                f.kind != self.dtype or f.dim != self.teacher.dim for f in self.fitted.values()):
            raise FhbError(
                f"lake dtype {self.dtype}: expected fitted {self.dtype} codecs of width {self.teacher.dim} for "
                f"{sorted(want)}, found {sorted(self.fitted)}; fit the codecs (fhb extract/transcode --codec)"
            )

    def num_frames(self, num_samples: int) -> int:
        """Target frames of ``num_samples`` audio samples (`TeacherMeta.num_frames`)."""
        return self.teacher.num_frames(num_samples)

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
            "codec": self.codec.to_dict(),
            "fitted": {k: v.to_dict() for k, v in self.fitted.items()},
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
            "codec": self.codec.to_dict(),
            "frame_rate": self.frame_rate,
            "sample_rate": self.sample_rate,
            "splits": {k: v.to_dict() for k, v in self.splits.items()},
            TEACHER_ATTR: self.teacher_weights.to_dict() if self.teacher_weights else None,
            **({FITTED_ATTR: {k: v.to_dict() for k, v in self.fitted.items()}} if self.fitted else {}),
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
        layers = _typed(d, "layers", list, where)
        if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in layers):
            raise FhbError(f"{where}: layers: expected a list of teacher layer numbers >= 1, found {layers!r}; "
                           "the lake's root zarr.json is damaged: re-run `fhb extract` into a new lake")
        for key in ("frame_rate", "sample_rate"):
            rate = _typed(d, key, int, where)
            if isinstance(rate, bool) or rate < 1:
                raise FhbError(f"{where}: {key}: expected a positive number per second, found {rate!r}; the "
                               "lake's root zarr.json is damaged: re-run `fhb extract` into a new lake")
        weights = d.get(TEACHER_ATTR)  # optional: absent in lakes written before it existed
        if weights is not None and not isinstance(weights, Mapping):
            _typed(d, TEACHER_ATTR, dict, where)
        return cls(
            format_version=version,
            fhb_version=_typed(d, "fhb_version", str, where),
            teacher=TeacherMeta.from_dict(_typed(d, "teacher", dict, where), f"{where}: teacher"),
            layers=tuple(_typed(d, "layers", list, where)),
            cnn_features=_typed(d, "cnn_features", bool, where),
            cnn_dim=d["cnn_dim"],
            dtype=_typed(d, "dtype", str, where),
            codec=TargetCodec.from_dict(_typed(d, "codec", dict, where)),
            frame_rate=_typed(d, "frame_rate", int, where),
            sample_rate=_typed(d, "sample_rate", int, where),
            splits={
                k: SplitInfo.from_dict(v, f"{where}: split {k!r}") for k, v in splits.items()
            },
            teacher_weights=TeacherWeights.from_dict(weights, f"{where}: {TEACHER_ATTR}") if weights else None,
            fitted={k: FittedSpec.from_dict(v, f"{where}: {FITTED_ATTR}[{k!r}]")
                    for k, v in _typed(d, FITTED_ATTR, dict, where).items()} if d.get(FITTED_ATTR) else {},
        )


def _require_keys(d: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise FhbError(f"{where}: expected a mapping with keys {list(keys)}, found {type(d).__name__} ({d!r:.80}); "
                       "the metadata is damaged: re-run `fhb extract` into a new lake")
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


# ---------------------------------------------------------------------------------------------
# Shards: checksums, the utterance index, the shard attributes, the arrays, the commit marker.


def crc32(a: np.ndarray) -> int:
    """The legacy checksum (shard format 1): crc32 of an array's values as stored, little-endian,
    C order, in-bounds part of a chunk. Checked where whole chunks are decoded (`fhb verify`, the
    random-access reader); the loader's fast path cannot check it (see `ShardAttrs.verifiable`)."""
    a = np.ascontiguousarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return zlib.crc32(memoryview(a).cast("B")) & 0xFFFFFFFF


def bound_checksum(identity: str, data: bytes | memoryview | np.ndarray) -> int:
    """crc32c of ``data`` seeded with the crc32c of ``identity``: equal only for these bytes at
    this place, so a valid chunk copied elsewhere does not pass."""
    return crc32c(data, crc32c(identity.encode("utf-8")))


def chunk_checksum(split: str, shard: str, array: str, i: int, stored: bytes | memoryview | np.ndarray) -> int:
    """Checksum (shard format 2) of chunk ``i`` of ``array`` in shard ``split/shard``: crc32c of
    the chunk's stored bytes (the compressed chunk file, exactly as on disk), bound to
    ``split/shard/array/i``. The writer computes it from the file it wrote; the loader, the
    random-access reader and `fhb verify` from the file they read, before decoding it."""
    return bound_checksum(f"fhb-lake chunk {split}/{shard}/{array}/{i}", stored)


def metadata_checksum(split: str, shard: str, array: str, raw: bytes) -> int:
    """Checksum (shard format 2) of ``array``'s ``zarr.json`` as stored (shape, chunking, dtype,
    codec chain and its parameters), bound to ``split/shard/array``."""
    return bound_checksum(f"fhb-lake array {split}/{shard}/{array}/{ZARR_JSON}", raw)


def index_checksum(split: str, shard: str, index: ShardIndex) -> int:
    """Checksum (shard format 2) of a shard's utterance index (ids, counts and offsets, as
    canonical JSON: sorted keys, no spaces, UTF-8), bound to ``split/shard``."""
    text = json.dumps(index.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return bound_checksum(f"fhb-lake index {split}/{shard}", text.encode("utf-8"))


@dataclass(frozen=True)
class ShardIndex:
    """Utterance index of one shard (rows in storage order: length or manifest, see lake-format.md).

    Strings are lists; counts and offsets are int64 arrays of length ``n``.
    """

    utt_ids: tuple[str, ...]
    speakers: tuple[str, ...]
    chapters: tuple[str, ...]
    transcripts: tuple[str, ...]
    num_samples: np.ndarray
    num_frames: np.ndarray
    sample_offsets: np.ndarray
    frame_offsets: np.ndarray
    ctc_labels: tuple[tuple[int, ...], ...] | None = None
    """The teacher's greedy CTC labels per utterance (`CTC_LABELS_COLUMN`); None without a CTC teacher."""

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def total_frames(self) -> int:
        """Frames of all utterances (rows of every target array)."""
        return int(self.num_frames.sum())

    @property
    def total_samples(self) -> int:
        """Samples of all utterances (length of ``audio``)."""
        return int(self.num_samples.sum())

    def to_dict(self) -> dict[str, list[Any]]:
        """Column dict (JSON-able; ``ctc_labels`` only when set)."""
        d: dict[str, list[Any]] = {
            "utt_id": list(self.utt_ids),
            "speaker": list(self.speakers),
            "chapter": list(self.chapters),
            "transcript": list(self.transcripts),
            "num_samples": self.num_samples.tolist(),
            "num_frames": self.num_frames.tolist(),
            "sample_offset": self.sample_offsets.tolist(),
            "frame_offset": self.frame_offsets.tolist(),
        }
        if self.ctc_labels is not None:
            d[CTC_LABELS_COLUMN] = [list(u) for u in self.ctc_labels]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str) -> ShardIndex:
        """Parse the ``index`` column dict; columns must exist and have equal lengths."""
        missing = [c for c in INDEX_COLUMNS if c not in d]
        if missing:
            raise FhbError(
                f"{where}: index expected columns {list(INDEX_COLUMNS)}, missing {missing}; the "
                f"shard is damaged: re-extract it"
            )
        lengths = {c: len(d[c]) for c in (*INDEX_COLUMNS, CTC_LABELS_COLUMN) if d.get(c) is not None}
        if len(set(lengths.values())) != 1:
            raise FhbError(
                f"{where}: index columns expected equal lengths, found {lengths}; the shard is "
                f"damaged: re-extract it"
            )

        def ints(c: str) -> np.ndarray:
            return np.asarray(d[c], dtype=np.int64).reshape(-1)

        return cls(
            utt_ids=tuple(str(u) for u in d["utt_id"]),
            speakers=tuple(str(u) for u in d["speaker"]),
            chapters=tuple(str(u) for u in d["chapter"]),
            transcripts=tuple(str(u) for u in d["transcript"]),
            num_samples=ints("num_samples"),
            num_frames=ints("num_frames"),
            sample_offsets=ints("sample_offset"),
            frame_offsets=ints("frame_offset"),
            ctc_labels=tuple(tuple(int(k) for k in u) for u in d[CTC_LABELS_COLUMN])
            if d.get(CTC_LABELS_COLUMN) is not None else None,
        )

    def consistency_problems(self) -> list[str]:
        """Offsets contiguous from 0, counts non-negative, ids unique: problems as sentences."""
        problems = []
        for what, counts, offsets in (
            ("frame", self.num_frames, self.frame_offsets),
            ("sample", self.num_samples, self.sample_offsets),
        ):
            if (counts < 0).any():
                problems.append(f"negative num_{what}s at rows {np.flatnonzero(counts < 0)[:5].tolist()}")
            expected = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else counts
            bad = np.flatnonzero(offsets != expected)
            if bad.size:
                i = int(bad[0])
                problems.append(
                    f"{what}_offset of {self.utt_ids[i]!r} (row {i}): expected {int(expected[i])} "
                    f"(contiguous), found {int(offsets[i])}"
                )
        if len(set(self.utt_ids)) != len(self.utt_ids):
            seen: set[str] = set()
            dup = [u for u in self.utt_ids if u in seen or seen.add(u)]  # type: ignore[func-returns-value]
            problems.append(f"duplicate utterance ids {dup[:5]}")
        return problems

    def ctc_problems(self, vocab_size: int | None) -> list[str]:
        """The `CTC_LABELS_COLUMN` against the lake's teacher (``vocab_size`` symbols of its
        ``ctc_vocab``; None: not a CTC teacher): present exactly when the teacher is a CTC model,
        every id a symbol (`ctc_label_problem`). Problems as sentences."""
        if vocab_size is None:
            return [] if self.ctc_labels is None else [
                f"found the column {CTC_LABELS_COLUMN}, expected none (the lake's teacher is not a CTC model)"]
        if self.ctc_labels is None:
            return [f"expected the column {CTC_LABELS_COLUMN} (the lake's teacher is a CTC model), found none"]
        for utt, labels in zip(self.utt_ids, self.ctc_labels):
            problem = ctc_label_problem(labels, vocab_size)
            if problem:
                return [f"{CTC_LABELS_COLUMN} of {utt!r}: {problem}"]
        return []


def ctc_label_problem(labels: Sequence[int], vocab_size: int) -> str | None:
    """Why ``labels`` (one utterance's stored greedy CTC labels) cannot be a CTC teacher's of
    ``vocab_size`` symbols, or None: every id is a symbol other than the blank (0, which greedy
    decoding drops)."""
    bad = [k for k in labels if not 0 < k < vocab_size]
    return f"expected ids 1..{vocab_size - 1} (0 is the blank, never stored), found {bad[:5]}" if bad else None


@dataclass(frozen=True)
class ShardAttrs:
    """The attributes of a shard group: ``{"committed": bool, "fhb_shard": {...}}``.

    ``fhb_shard`` holds the split and shard names, the utterance index (one column per field,
    rows in manifest order), the skipped utterances, the checksums and who wrote it. Offsets
    are cumulative: utterance ``i`` owns frames ``frame_offset[i] : frame_offset[i] + num_frames[i]``
    of every target array and samples ``sample_offset[i] : sample_offset[i] + num_samples[i]`` of
    ``audio``. `to_attrs` and `from_attrs` are inverses.

    Checksums by ``format_version`` (see `SHARD_FORMAT_VERSION`): in format 2,
    ``checksums[array][i]`` is `chunk_checksum` of chunk ``i``'s stored bytes,
    ``metadata_checksums[array]`` is `metadata_checksum` of the array's ``zarr.json`` and the
    index carries `index_checksum` (checked by `from_attrs`); in format 1 (legacy),
    ``checksums[array][i]`` is the `crc32` of chunk ``i``'s decoded values and nothing else is
    checksummed.
    """

    committed: bool
    split: str
    name: str
    index: ShardIndex
    skipped: tuple[dict[str, str], ...]
    checksums: dict[str, list[int]]
    written: dict[str, Any] = field(default_factory=dict)
    format_version: int = SHARD_FORMAT_VERSION
    metadata_checksums: dict[str, int] = field(default_factory=dict)

    @property
    def num_utterances(self) -> int:
        """Utterances stored in the shard."""
        return len(self.index)

    @property
    def verifiable(self) -> bool:
        """Whether the shard's checksums cover its stored bytes (format 2): every chunk file can be
        checked before it is decoded, also when only some of its Blosc blocks are. False for a
        legacy shard (format 1), whose checksums cover decoded whole chunks only."""
        return self.format_version >= SHARD_FORMAT_VERSION

    def chunk_problem(self, array: str, i: int, stored: bytes | memoryview | np.ndarray) -> str | None:
        """None if ``stored`` (the bytes of chunk ``i`` of ``array`` as read) is what was written
        there (format 2); else what is wrong, as a sentence without the fix."""
        assert self.verifiable, "chunk_problem: a legacy shard has no checksums of stored bytes"
        sums = self.checksums.get(array)
        if sums is None or not 0 <= i < len(sums):
            return f"expected a recorded checksum, found none ({0 if sums is None else len(sums)} recorded)"
        got = chunk_checksum(self.split, self.name, array, i, stored)
        if got != sums[i]:
            return (f"crc32c {got:#010x} of its {_nbytes(stored)} stored bytes differs from the {sums[i]:#010x} "
                    f"written for this chunk (damaged, or the chunk of another array, shard or position)")
        return None

    def metadata_problem(self, array: str, raw: bytes) -> str | None:
        """None if ``raw`` (``array``'s ``zarr.json`` as read) is what was written (format 2); else
        what is wrong."""
        assert self.verifiable, "metadata_problem: a legacy shard has no metadata checksums"
        want = self.metadata_checksums.get(array)
        got = metadata_checksum(self.split, self.name, array, raw)
        if want is None:
            return "expected a recorded checksum of its zarr.json, found none"
        if got != want:
            return (f"crc32c {got:#010x} of its {ZARR_JSON} differs from the {want:#010x} written (shape, "
                    f"dtype or codec parameters edited, or the array of another shard)")
        return None

    def value_problem(self, array: str, i: int, values: np.ndarray) -> str | None:
        """Legacy shards (format 1): None if the decoded values of chunk ``i`` (its in-bounds rows)
        have the recorded `crc32`; else what is wrong."""
        assert not self.verifiable, "value_problem: checks legacy shards only"
        sums = self.checksums.get(array)
        got = crc32(values)
        if sums is None or not 0 <= i < len(sums) or got != sums[i]:
            want = "none" if sums is None or not 0 <= i < len(sums) else f"{sums[i]:#010x}"
            return f"crc32 {got:#010x} of its decoded values differs from the one written ({want})"
        return None

    def location_problem(self, split: str, shard: str) -> str | None:
        """None if these attributes name the place they were read from; else what is wrong (a shard
        directory, or its ``zarr.json``, copied or moved from elsewhere)."""
        if (self.split, self.name) != (split, shard):
            return (f"expected the attributes of shard {split}/{shard}, found those of {self.split}/{self.name} "
                    f"(a shard directory or its {ZARR_JSON} copied from elsewhere)")
        return None

    def to_attrs(self) -> dict[str, Any]:
        """The shard group's attributes (JSON-able); totals are written for human readers."""
        algorithm, unit = _CHECKSUM_KIND[self.format_version]
        sums: dict[str, Any] = {"algorithm": algorithm, "unit": unit}
        if self.verifiable:
            sums["bound_to"] = CHECKSUM_BINDING
        sums["arrays"] = {k: list(v) for k, v in self.checksums.items()}
        if self.verifiable:
            sums["metadata"] = dict(self.metadata_checksums)
            sums["index"] = index_checksum(self.split, self.name, self.index)
        return {
            COMMITTED_ATTR: self.committed,
            SHARD_ATTR: {
                "format_version": self.format_version,
                "split": self.split,
                "name": self.name,
                "num_utterances": len(self.index),
                "num_frames": self.index.total_frames,
                "num_samples": self.index.total_samples,
                "index": self.index.to_dict(),
                "skipped": [dict(s) for s in self.skipped],
                "checksums": sums,
                "written": dict(self.written),
            },
        }

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str) -> ShardAttrs:
        """Parse a shard group's attributes (FhbError naming ``where`` if malformed, of a newer
        format, or, in format 2, if the index is not the one written)."""
        info = attrs.get(SHARD_ATTR)
        if not isinstance(info, Mapping):
            raise FhbError(
                f"{where}: expected attribute {SHARD_ATTR!r} (an fhb shard), found keys "
                f"{sorted(attrs)}; the shard is damaged or foreign: re-extract it"
            )
        for key in ("split", "name", "index", "skipped", "checksums"):
            if key not in info:
                raise FhbError(
                    f"{where}: expected {SHARD_ATTR}.{key}, missing; the shard is damaged: "
                    f"re-extract it"
                )
        version = info.get("format_version", LEGACY_SHARD_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool) or version not in _CHECKSUM_KIND:
            fix = "upgrade fhb" if isinstance(version, int) and version > SHARD_FORMAT_VERSION else "re-extract it"
            raise FhbError(f"{where}: expected shard format_version in {sorted(_CHECKSUM_KIND)}, found "
                           f"{version!r}; {fix}")
        sums = info["checksums"]
        kind = (sums.get("algorithm"), sums.get("unit")) if isinstance(sums, Mapping) else (None, None)
        if kind != _CHECKSUM_KIND[version] or not isinstance(sums.get("arrays"), Mapping):
            raise FhbError(
                f"{where}: expected checksums {'/'.join(_CHECKSUM_KIND[version])} (shard format {version}), "
                f"found {kind[0]!r}/{kind[1]!r}; the shard is damaged: run `fhb verify` and re-extract it"
            )
        try:
            parsed = cls(
                committed=is_committed(attrs),
                split=_text(info["split"]),
                name=_text(info["name"]),
                index=ShardIndex.from_dict(info["index"], where),
                skipped=tuple(dict(s) for s in info["skipped"]),
                checksums={str(k): [int(c) for c in v] for k, v in sums["arrays"].items()},
                written=dict(info.get("written") or {}),
                format_version=version,
                metadata_checksums={str(k): int(v) for k, v in (sums.get("metadata") or {}).items()},
            )
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as exc:
            raise FhbError(f"{where}: expected the attributes of an fhb shard, found a value of the wrong type or "
                           f"shape ({type(exc).__name__}: {exc}); the shard is damaged: re-extract it") from None
        if parsed.verifiable:
            got = index_checksum(parsed.split, parsed.name, parsed.index)
            if sums.get("index") != got:
                raise FhbError(
                    f"{where}: index crc32c {got:#010x} differs from the one written ({sums.get('index')!r}): "
                    f"utterance ids, counts or offsets were edited or damaged; run `fhb verify` and "
                    f"re-extract the shard"
                )
        return parsed


def _nbytes(data: bytes | memoryview | np.ndarray) -> int:
    return data.nbytes if isinstance(data, (np.ndarray, memoryview)) else len(data)


def _text(value: object) -> str:
    """A string attribute (TypeError otherwise: `ShardAttrs.from_attrs` reports it)."""
    if not isinstance(value, str):
        raise TypeError(f"expected a string, found {value!r}")
    return value


def writing_attrs() -> dict[str, Any]:
    """The attributes of a shard group while it is being written (not a shard yet)."""
    return {COMMITTED_ATTR: False, SHARD_ATTR: {"state": "writing"}}


def is_committed(attrs: Mapping[str, Any] | None) -> bool:
    """Whether a shard group with attributes ``attrs`` is committed (its commit marker is set).

    The marker is written last, after everything else of the shard: a reader sees a shard only
    when this holds."""
    return bool(attrs) and attrs.get(COMMITTED_ATTR) is True  # type: ignore[union-attr]


def duplicate_ids(shards: Iterable[tuple[str, Sequence[str]]]) -> Iterator[tuple[str, str, str]]:
    """``(utt_id, first shard, later shard)`` for every utterance id that ``shards`` (pairs of
    shard name and its ids, in listing order) hold more than once: ids are unique in a split."""
    seen: dict[str, str] = {}
    for shard, ids in shards:
        for u in ids:
            if u in seen:
                yield u, seen[u], shard
            else:
                seen[u] = shard


def duplicate_id_error(split: str, duplicate: tuple[str, str, str], fix: str) -> FhbError:
    """The one-line error for a `duplicate_ids` result in ``split``."""
    u, first, later = duplicate
    return FhbError(
        f"split {split!r}: expected unique utterance ids, found {u!r} in shards {first!r} and "
        f"{later!r}; {fix}"
    )


@dataclass(frozen=True)
class ArraySpec:
    """One array of a shard: name, shape, chunk shape, stored dtype and its ``fhb`` attributes."""

    name: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype
    attrs: dict[str, Any]


def shard_arrays(meta: LakeMeta, frames: int, samples: int) -> list[ArraySpec]:
    """The arrays of a shard of ``frames`` target frames and ``samples`` audio samples.

    ``audio`` (``S`` int16); one ``layer_KK`` per stored layer and ``cnn`` if stored
    (``T x D``, chunked ``chunk_frames x D``, the codec's stored dtype); for int8 lakes each
    target array has a ``<name>_scale`` companion (``ceil(T / B) x 2 x D`` float32, scale
    chunk ``i`` belonging to data chunk ``i``). The writer creates exactly these; the verifier
    expects exactly these.
    """
    codec = meta.codec
    c = codec.chunk_frames
    out = [ArraySpec(AUDIO_ARRAY, (samples,), (codec.audio_chunk_samples,), np.dtype(np.int16),
                     {"kind": "audio", "sample_rate": meta.sample_rate})]
    targets: list[tuple[str, int, dict[str, Any]]] = [
        (layer_array_name(k), meta.teacher.dim, {"kind": "layer", "layer": k}) for k in meta.layers
    ]
    if meta.cnn_features:
        targets.append((CNN_ARRAY, int(meta.cnn_dim or 0), {"kind": "cnn"}))
    encoding = codec.to_dict()["encoding"]
    for name, dim, attrs in targets:
        fitted = meta.fitted.get(name)
        if fitted is not None:  # T x width codes of the array's fitted codec
            out.append(ArraySpec(name, (frames, fitted.width), (c, fitted.width), fitted.code_dtype,
                                 {**attrs, "encoding": encoding, "dim": dim}))
            continue
        out.append(ArraySpec(name, (frames, dim), (c, dim), codec.stored_dtype,
                             {**attrs, "encoding": encoding}))
        if codec.has_scales:
            b = codec.scale_block_frames or c
            out.append(ArraySpec(scale_array_name(name), (num_chunks(frames, b), 2, dim), (c // b, 2, dim),
                                 np.dtype(np.float32),
                                 {"kind": "scale", "of": name, "block_frames": b, "rows": ["scale", "offset"]}))
    return out
