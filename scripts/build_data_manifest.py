"""Build the data manifest and the embedded samples from a folder of the real data sets.

    python scripts/build_data_manifest.py ../shared/data

writes `src/latentspace/core/datasets.json` (for each data set: origin repository, pinned commit, every
file's URL path, size and sha256, the licence notice) and `src/latentspace/samples/` (the small real
samples that ship inside the package, each with its licence notice). The data folder's files are
byte-identical to their origins at the pinned commits (its README.md says so), so their checksums are the
ones `latentspace data fetch` checks. Rerun only when a data set or a sample changes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "src/latentspace/core/datasets.json"
SAMPLES = ROOT / "src/latentspace/samples"

# name -> (repository, commit, {local prefix: path in the repository}, licence, what, used by).
# A local file maps to the longest matching prefix; files under no prefix are licence/notice copies
# whose text goes into the manifest (they were renamed when copied, so they have no URL).
DATASETS = {
    "loghub": ("logpai/loghub", "dd61d0952749ee7963bde24220d1be5ede023033", {"": ""},
               "free for research and academic work, citing loghub (notice in LICENSE)",
               "2,000-line log samples of 15 systems", "logs, ltt"),
    "gsm8k": ("openai/grade-school-math", "3101c7d5072418e28b9008a6636bde82a006892c",
              {"train.jsonl": "grade_school_math/data/train.jsonl", "test.jsonl": "grade_school_math/data/test.jsonl"},
              "MIT", "grade-school math word problems (7,473 train, 1,319 test)", "lipo"),
    "time-mmd": ("AdityaLab/Time-MMD", "00281e2d86058286d5548b15a7670e8eda57ef62",
                 {"numerical/": "numerical/", "textual/": "textual/", "README-origin.md": "README.md"},
                 "no licence file; cite Liu et al., NeurIPS 2024", "multimodal time series, 8 domains", "lbs"),
    "babi-tasks": ("ethancaballero/Improved-Dynamic-Memory-Networks-DMN-plus",
                   "406d0f033686cc06151493cba111706b6d03d43f",
                   {"en/": "data/tasks_1-20_v1-2/en/"}, "CC BY 3.0", "the 20 bAbI QA tasks, 1k version", "rbsqa"),
    "instruction-induction": ("keirp/automatic_prompt_engineer", "eac521c79a78965245ce7745dcc9f6b0792c7ec7",
                              {"raw/": "experiments/data/instruction_induction/raw/",
                               "annotations/": "experiments/data/instruction_induction/annotations/",
                               "README-origin.md": "experiments/data/instruction_induction/README.md"},
                              "MIT", "24 instruction-induction tasks (Honovich et al. 2022)", "lipo"),
    "cosqa": ("Jun-jie-Huang/CoCLR", "14ebcacf9e9bc3e7109102632bc63047876f27d2",
              {"code_idx_map.json": "data/search/code_idx_map.txt",
               "dev-500.json": "data/search/cosqa-retrieval-dev-500.json"},
              "MIT", "6,267 Python functions and 500 real web queries (dev)", "codesearch"),
}

# the lipo development tasks
II_TASKS = ["antonyms", "sentiment", "larger_animal", "first_word_letter", "singular_to_plural", "sum"]
GSM8K_SAMPLE = {"train.jsonl": 200, "test.jsonl": 100}  # the first lines of each file


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_of(local: str, prefixes: dict[str, str]) -> str | None:
    best = None
    for prefix in prefixes:
        if local.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        return None
    return prefixes[best] + local[len(best):]


def sample_files(name: str, folder: Path) -> list[str]:
    """The files (relative to the data set) copied unchanged into the package sample."""
    if name == "loghub":
        return sorted(str(p.relative_to(folder)) for p in folder.glob("*/*_2k.log"))
    if name == "babi-tasks":
        return sorted(str(p.relative_to(folder)) for p in folder.glob("en/qa[12]_*.txt"))
    if name == "instruction-induction":
        return [f"{part}/{task}.json" for task in II_TASKS for part in ("raw/induce", "raw/execute", "annotations")]
    return []


def main(data: Path) -> None:
    manifest = {}
    if SAMPLES.exists():
        shutil.rmtree(SAMPLES)
    for name, (repo, commit, prefixes, licence, what, used_by) in DATASETS.items():
        folder = data / name
        files, notices = [], {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            local = str(path.relative_to(folder))
            source = source_of(local, prefixes) if local != "LICENSE" or "" not in prefixes else None
            if source is None or local.startswith("LICENSE"):
                notices[local] = path.read_bytes().decode()
                continue
            files.append({"path": local, "source": source, "size": path.stat().st_size, "sha256": sha256(path)})
        sample = {"files": sample_files(name, folder), "derived": {}}
        if name == "gsm8k":
            sample["derived"] = {f: f"the first {n} lines of {f}" for f, n in GSM8K_SAMPLE.items()}
        manifest[name] = {"repo": repo, "commit": commit, "licence": licence, "what": what, "used_by": used_by,
                          "files": files, "notices": notices, "sample": sample}
        out = SAMPLES / name
        for local in sample["files"]:
            (out / local).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / local, out / local)
        for local, n in (GSM8K_SAMPLE.items() if name == "gsm8k" else []):
            out.mkdir(parents=True, exist_ok=True)
            lines = (folder / local).read_text().splitlines(keepends=True)[:n]
            (out / local).write_text("".join(lines))
        if out.exists():
            for local, text in notices.items():
                (out / local).write_bytes(text.encode())
    MANIFEST.write_text(json.dumps(manifest, indent=1) + "\n")
    sys.path.insert(0, str(ROOT / "src"))
    from latentspace.core.data import NOTICE, notice_text

    for name in manifest:
        if (SAMPLES / name).is_dir():
            derived = "".join(f"\n- {f}: {how} (not byte-identical to the origin)"
                              for f, how in manifest[name]["sample"]["derived"].items())
            (SAMPLES / name / NOTICE).write_text(notice_text(name) + "\nThis is the sample that ships inside the "
                                                 "latentspace package; `latentspace data fetch " + name + "` gets "
                                                 "the full data set." + derived + "\n")
    size = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file())
    print(f"wrote {MANIFEST} ({sum(len(m['files']) for m in manifest.values())} files) and {SAMPLES} "
          f"({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "data"))
