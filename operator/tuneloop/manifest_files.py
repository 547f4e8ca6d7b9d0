"""Reading manifest files as `kubectl apply -f` does: a file or a folder of .yaml/.yml/.json files,
each holding one or more documents; a mapping that repeats a key is refused (kubectl refuses it
too; YAML libraries silently keep the last value). Reading is bounded: nesting deeper than
MAX_DEPTH, or aliases that expand a document past MAX_EXPANDED_NODES (a "billion laughs"), are
refused by name before anything is built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
MAX_DEPTH = 100
# More than a 1.5 MiB object (the most Kubernetes stores) can hold: each node is at least two bytes.
MAX_EXPANDED_NODES = 1_000_000


class ManifestError(Exception):
    pass


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (merge keys aside), nesting deeper
    than MAX_DEPTH and documents whose aliases expand past MAX_EXPANDED_NODES."""

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                              self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        sizes: dict[int, int] = {}

        def expanded(item: yaml.Node) -> int:  # an alias is the same node again: counted once per use
            if id(item) not in sizes:
                children = (item.value if isinstance(item, yaml.SequenceNode) else
                            [part for pair in item.value for part in pair] if isinstance(item, yaml.MappingNode)
                            else [])
                sizes[id(item)] = min(1 + sum(expanded(child) for child in children), MAX_EXPANDED_NODES + 1)
            return sizes[id(item)]

        if node is not None and expanded(node) > MAX_EXPANDED_NODES:
            raise yaml.composer.ComposerError(None, None, f"its aliases expand it past {MAX_EXPANDED_NODES:,} "
                                                          "values", node.start_mark)
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first given on line {seen[key]})", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the base loader says so
        return super().construct_mapping(node, deep=deep)


def manifest_files(path: Path, recursive: bool = False) -> list[Path]:
    """`path` itself, or the manifest files in the folder (and below it with `recursive`), sorted."""
    if not path.is_dir():
        return [path]
    candidates = path.rglob("*") if recursive else path.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    if not files:
        raise ManifestError(f"{path}: no {', '.join(MANIFEST_SUFFIXES)} files in the folder"
                            + ("" if recursive else " (--recursive reads the folders below it)"))
    return files


def load_documents(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ManifestError(f"{path}: cannot read: {error}") from None
    try:
        documents = [doc for doc in yaml.load_all(text, Loader=StrictLoader) if doc is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ManifestError(f"{where}: not valid YAML: {getattr(error, 'problem', error)}") from None
    if not documents:
        raise ManifestError(f"{path}: no manifests in the file")
    for index, document in enumerate(documents):
        if not isinstance(document, dict):
            raise ManifestError(f"{path}: document {index + 1} is not a mapping")
    return documents
