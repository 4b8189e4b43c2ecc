"""Summarise a py-spy ``--format raw`` profile: where the time of a task goes.

    python -m benchmarks.profile profile.txt [--top 25]

Prints the share of samples (of the samples where the process was busy)
spent inside each function, inclusive, for the functions that matter most.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        frames, _, count = line.rpartition(" ")
        if not frames or not count.isdigit():
            continue
        names = []
        for frame in frames.split(";"):
            match = _FRAME.match(frame.strip())
            if match is None:
                names.append(frame.strip())
                continue
            module = Path(match["file"]).name.removesuffix(".py")
            package = Path(match["file"]).parent.name
            names.append(f"{package}/{module}.{match['func']}")
        stacks.append((names, int(count)))
    return stacks


def _idle(stack: list[str]) -> bool:
    leaf = stack[-1] if stack else ""
    return any(word in leaf for word in ("select", "poll", ".wait", "_wait", "sleep", "epoll"))


def summarise(path: Path, top: int = 25) -> list[tuple[str, float]]:
    stacks = [(s, c) for s, c in load(path) if not _idle(s)]
    busy = sum(c for _, c in stacks) or 1
    inclusive: Counter[str] = Counter()
    for stack, count in stacks:
        for name in set(stack):
            inclusive[name] += count
    return [(name, 100.0 * n / busy) for name, n in inclusive.most_common(top)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="only functions containing this text")
    args = parser.parse_args(argv)
    for name, share in summarise(args.profile, top=10_000):
        if args.match in name:
            print(f"{share:6.1f}%  {name}")
            args.top -= 1
            if args.top == 0:
                break


if __name__ == "__main__":
    main()
