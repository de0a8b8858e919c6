"""Finding the images of a split in an ImageNet-style (ImageFolder) tree.

`SRC/<split>/<class>/<image>` gives labels by folder, classes sorted by name (label i = i-th
folder, as torchvision's ImageFolder). A flat split folder (ImageNet's `val/` as distributed) needs
a labels file: lines `<file> <label>` (also `ImageId,PredictionString` CSV), or one `<label>` per
line for the images in sorted file-name order (the devkit's ground-truth list). A label is a class
name, or an integer ID into a synset list given with it (the devkit's IDs are 1-based).

Inputs that cannot be used are reported (each message names the file) and left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import DataError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class SourceImage:
    path: str
    key: str  # unique in the split; the tar member stem, so no dots (webdataset splits keys at dots)
    label: int


@dataclass
class SplitSource:
    split: str
    classes: list[str]
    images: list[SourceImage]
    problems: list[str] = field(default_factory=list)  # inputs left out, each naming the file


def find_classes(split_dir: str) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def scan_split(
    src: str, split: str, *, classes: list[str] | None = None, labels_file: str | None = None, synsets_file: str | None = None
) -> SplitSource:
    """The images of `src/split`. `classes` fixes the label order (e.g. train's for val)."""
    split_dir = os.path.join(src, split)
    if not os.path.isdir(split_dir):
        raise DataError(f"{split_dir} is not a folder (expected {split}/<class>/<image> or a flat {split}/ with a labels file)")
    if find_classes(split_dir):
        if labels_file:
            raise DataError(f"{split_dir} has class folders; a labels file is only for a flat folder of images")
        source = _scan_class_folders(split_dir, split, classes)
    else:
        if not labels_file:
            raise DataError(f"{split_dir} has no class folders; give a labels file for its images (--val-labels)")
        source = _scan_flat(split_dir, split, classes, labels_file, synsets_file)
    if not source.images:
        raise DataError(f"no usable images under {split_dir}" + (f" ({len(source.problems)} inputs left out)" if source.problems else ""))
    return source


def _scan_class_folders(split_dir: str, split: str, classes: list[str] | None) -> SplitSource:
    found = find_classes(split_dir)
    classes = classes if classes is not None else found
    index = {name: i for i, name in enumerate(classes)}
    source = SplitSource(split, list(classes), [])
    keys: set[str] = set()
    for name in found:
        folder = os.path.join(split_dir, name)
        if name not in index:
            source.problems.append(f"{folder}: class {name!r} is not among the {len(classes)} classes of the first split; left out")
            continue
        files = _image_files(folder, source.problems)
        if not files:
            source.problems.append(f"{folder}: empty class folder (no images)")
        for path in files:
            _add(source, keys, path, os.path.relpath(path, split_dir), index[name])
    for entry in os.scandir(split_dir):
        if entry.is_file() and not entry.name.startswith("."):
            source.problems.append(f"{entry.path}: file outside any class folder; left out")
    return source


def _scan_flat(split_dir: str, split: str, classes: list[str] | None, labels_file: str, synsets_file: str | None) -> SplitSource:
    problems: list[str] = []
    files = _image_files(split_dir, problems)
    synsets = _read_lines(synsets_file) if synsets_file else None
    entries = _read_labels(labels_file)
    numeric = next(((label, line) for _, label, line in entries if label.isdigit() and label not in (classes or ())), None)
    if numeric and not synsets:
        raise DataError(f"{labels_file}:{numeric[1]}: integer label {numeric[0]!r}; integer IDs need the synset list that "
                        f"numbers them (--val-synsets, one class name per line, line i = ID i)")
    if classes is None:
        classes = sorted(synsets) if synsets else sorted({label for _, label, _ in entries})
    source = SplitSource(split, list(classes), [], problems)
    index = {name: i for i, name in enumerate(classes)}
    by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in files}
    if all(name is None for name, _, _ in entries):
        if len(entries) != len(files):
            raise DataError(f"{labels_file} has {len(entries)} labels but {split_dir} has {len(files)} images; they must pair up in sorted file order")
        pairs = [(path, label, line) for path, (_, label, line) in zip(files, entries)]
    else:
        pairs = []
        for name, label, line in entries:
            path = by_stem.get(os.path.splitext(name or "")[0])
            if path is None:
                problems.append(f"{labels_file}:{line}: names {name!r}, which is not an image in {split_dir}; left out")
            else:
                pairs.append((path, label, line))
        labelled = {p for p, _, _ in pairs}
        problems.extend(f"{p}: no label in {labels_file}; left out" for p in files if p not in labelled)
    keys: set[str] = set()
    for path, label, line in pairs:
        target = _resolve_label(label, index, synsets)
        if target is None:
            problems.append(f"{labels_file}:{line}: label {label!r} for {os.path.basename(path)} is not a known class; left out")
            continue
        _add(source, keys, path, os.path.relpath(path, split_dir), target)
    return source


def _resolve_label(label: str, index: dict[str, int], synsets: list[str] | None) -> int | None:
    if label in index:
        return index[label]
    if synsets and label.isdigit() and 1 <= int(label) <= len(synsets):
        return index.get(synsets[int(label) - 1])
    return None


def _read_labels(path: str) -> list[tuple[str | None, str, int]]:
    """(file name or None, label, line number) for each data line of a labels file."""
    entries = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise DataError(f"cannot read labels file {path}: {err}") from None
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text or text.startswith("#") or text.lower().startswith("imageid,"):
            continue
        fields = text.split(",", 1) if "," in text else text.split(None, 1)
        if len(fields) == 1:
            entries.append((None, fields[0], number))
        else:
            entries.append((fields[0].strip(), fields[1].split()[0], number))  # CSV: label then boxes
    if not entries:
        raise DataError(f"labels file {path} holds no labels")
    return entries


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError as err:
        raise DataError(f"cannot read synset list {path}: {err}") from None


def _image_files(folder: str, problems: list[str]) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(path)
            else:
                problems.append(f"{path}: not an image file extension; left out")
    return sorted(files)


def _add(source: SplitSource, keys: set[str], path: str, relpath: str, label: int) -> None:
    key = os.path.splitext(relpath)[0].replace(os.sep, "/").replace(".", "_")
    if key in keys:
        source.problems.append(f"{path}: same sample key {key!r} as another file; left out")
        return
    keys.add(key)
    source.images.append(SourceImage(path, key, label))
