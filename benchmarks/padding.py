"""Padding and read locality of the epoch plan on real utterance lengths (planning only: seconds).

    python benchmarks/padding.py LEN_CSV [LEN_CSV ...] [--batch-size 3] [--shard-hours 1]

``LEN_CSV``: the published FitHuBERT ``data/len_for_bucket/<split>.csv`` (columns ``file_path``,
``length`` in samples), e.g. ``train-clean-100.csv``. For each lake order (``manifest``: sorted by
utterance id, fhb's order before issue 13; ``length``: longest first, what ``fhb extract`` writes
now) and each bucketing (``window``, ``sorted``) it plans epoch 0 as `fhb.training.epoch.plan_epoch`
does for a lake of 2048-frame chunks cut into shards of ``--shard-hours``, and prints:

- padded: padding's share of the target frames of the batches (``EpochPlan.padded_frames_share``);
- read: target frames of the chunks each window touches, summed over windows, over the valid
  frames (1.0 = every chunk decoded once; what the loader's decode work scales with);
- published: the published loader's share (whole set sorted, fixed batches of ``--batch-size``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhb.nn.frames import conv_output_length  # noqa: E402
from fhb.training.epoch import EpochPlan, PlanEntry, plan_epoch  # noqa: E402

CHUNK_FRAMES = 2048


def read_lengths(paths: list[Path]) -> list[tuple[str, int]]:
    """(utterance id, samples) of every row of the published length CSVs."""
    out: list[tuple[str, int]] = []
    for p in paths:
        with open(p, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                out.append((Path(row["file_path"]).name.split(".")[0], int(row["length"])))
    return out


def entries(utts: list[tuple[str, int]], order: str, shard_hours: float) -> list[PlanEntry]:
    """Plan entries of a lake holding ``utts`` in ``order``, cut into shards as `plan_shards` does."""
    ordered = sorted(utts) if order == "manifest" else sorted(utts, key=lambda u: (-u[1], u[0]))
    budget = int(shard_hours * 3600 * 16000)
    out: list[PlanEntry] = []
    source = offset = size = 0
    for _, n in ordered:
        if size >= budget:
            source, offset, size = source + 1, 0, 0
        frames = conv_output_length(n)
        out.append(PlanEntry(source, offset, frames, n))
        offset += frames
        size += n
    return out


def read_share(plan: EpochPlan, ents: list[PlanEntry]) -> float:
    """Frames of the chunks touched per window (summed) over the valid frames."""
    touched = valid = 0
    for rank in plan.ranks:
        windows: dict[int, set[tuple[int, int]]] = {}
        for b in rank:
            for u in b.utts:
                e = ents[u.utt]
                valid += u.num_frames
                first, last = e.frame_offset // CHUNK_FRAMES, (e.frame_offset + e.num_frames - 1) // CHUNK_FRAMES
                windows.setdefault(b.window, set()).update((e.source, c) for c in range(first, last + 1))
        touched += sum(len(c) for c in windows.values()) * CHUNK_FRAMES
    return touched / valid


def published_share(utts: list[tuple[str, int]], batch_size: int) -> float:
    """The published loader: sorted longest first, fixed batches (a last batch of one dropped)."""
    frames = sorted((conv_output_length(n) for _, n in utts), reverse=True)
    batches = [frames[k : k + batch_size] for k in range(0, len(frames), batch_size)]
    if len(batches[-1]) == 1:
        batches.pop()
    total = sum(len(b) * b[0] for b in batches)
    return sum(len(b) * b[0] - sum(b) for b in batches) / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv", nargs="+", type=Path)
    ap.add_argument("--batch-size", type=int, default=3)
    ap.add_argument("--shard-hours", type=float, default=1.0)
    ap.add_argument("--window-blocks", type=int, default=8)
    args = ap.parse_args()
    utts = read_lengths(args.csv)
    print(f"{len(utts)} utterances, {sum(n for _, n in utts) / 16000 / 3600:.1f} h; batch_size {args.batch_size}")
    print(f"published loader: padded {100 * published_share(utts, args.batch_size):.4f} %")
    print("| lake order | bucketing | padded frames | read / valid frames |")
    print("|---|---|---|---|")
    for order in ("manifest", "length"):
        ents = entries(utts, order, args.shard_hours)
        for bucketing in ("window", "sorted"):
            plan = plan_epoch(ents, chunk_frames=CHUNK_FRAMES, seed=0, epoch=0, frames_of=conv_output_length,
                              batch_size=args.batch_size, window_blocks=args.window_blocks, bucketing=bucketing)
            print(f"| {order} | {bucketing} | {100 * plan.padded_frames_share():.4f} % | "
                  f"{read_share(plan, ents):.2f} |")


if __name__ == "__main__":
    main()
