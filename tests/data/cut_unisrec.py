"""Cut the test fixture tests/data/scientific/ from UniSRec's Scientific release: its first USERS users, their
items re-indexed in the order of the release's item indices, files in the release's exact format.

    python tests/data/cut_unisrec.py ../shared/datasets/amazon-scientific Scientific tests/data/scientific 300
"""
import sys
from pathlib import Path


def cut(source: Path, name: str, target: Path, users: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    inter = {}
    for part in ("train", "valid", "test"):
        lines = (source / f"{name}.{part}.inter").read_text().splitlines()
        inter[part] = (lines[0], [line.split("\t") for line in lines[1:] if int(line.split("\t")[0]) < users])
    used = sorted({int(i) for _, rows in inter.values() for row in rows for i in [*row[1].split(), row[2]]})
    new = {old: n for n, old in enumerate(used)}
    for part, (header, rows) in inter.items():
        body = ["\t".join([u, " ".join(str(new[int(i)]) for i in h.split()), str(new[int(t)])]) for u, h, t in rows]
        (target / f"{name}.{part}.inter").write_text("\n".join([header, *body]) + "\n")
    item_lines = (source / f"{name}.item2index").read_text().splitlines()
    raw = {int(index): token for token, index in (line.split("\t") for line in item_lines)}
    (target / f"{name}.item2index").write_text("".join(f"{raw[old]}\t{n}\n" for n, old in enumerate(used)))
    user_lines = (source / f"{name}.user2index").read_text().splitlines()
    kept = [line for line in user_lines if int(line.split("\t")[1]) < users]
    (target / f"{name}.user2index").write_text("\n".join(kept) + "\n")
    text = (source / f"{name}.text").read_text().splitlines()
    wanted = set(raw[old] for old in used)
    (target / f"{name}.text").write_text("\n".join([text[0], *(line for line in text[1:] if line.split("\t")[0] in wanted)]) + "\n")


if __name__ == "__main__":
    cut(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
