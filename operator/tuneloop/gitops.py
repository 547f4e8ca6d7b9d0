"""GitOps promotion: pin a ModelDeployment's adapter version in a Git working tree (issue 13).

    tuneloop promote FILE --version 7            writes spec.adapter.version: "7" into FILE
    tuneloop promote FILE --from-alias champion  pins the version the MLflow alias points at now

The manifest is edited in place with ruamel.yaml's round-trip mode: comments, key order, quotes
and indentation stay as they were, and in a file of several documents only the edited document
is written again (the others, and the `---` lines, are kept byte for byte). The change can be
committed on a branch with plain `git`; Argo CD or Flux then applies it to the cluster.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.api.common import SpecError
from tuneloop.api.modeldeployment import KIND, parse_manifest

# A line that starts a new YAML document: `---`, alone or followed by a comment.
_DOCUMENT_START = re.compile(r"^---[ \t]*(?:#.*)?\r?$")
# (mapping, sequence, offset) indentations tried, in order, until one round-trips a document unchanged.
_INDENTS = ((2, 4, 2), (2, 2, 0), (4, 4, 2), (4, 6, 4), (4, 4, 0), (2, 4, 0), (3, 3, 0))


class GitOpsError(Exception):
    """Promotion cannot go ahead; the message names the file or repository and what is wrong."""


@dataclass(frozen=True)
class Change:
    """What pin_version did to one ModelDeployment document."""

    path: Path
    name: str  # metadata.name of the ModelDeployment
    old_version: str | None  # the version pinned before, if any
    old_alias: str | None  # the alias followed before (pinning replaces it), if any
    new: str  # the version now pinned
    changed: bool  # False: the file already pinned this version and was not written

    @property
    def old(self) -> str | None:
        """The previous reference in words: `version 3`, `alias champion`, or None (a uri adapter)."""
        if self.old_version is not None:
            return f"version {self.old_version}"
        if self.old_alias is not None:
            return f"alias {self.old_alias}"
        return None

    def describe(self) -> str:
        if not self.changed:
            return f"{self.path}: ModelDeployment/{self.name}: already pins version {self.new}"
        return f"{self.path}: ModelDeployment/{self.name}: {self.old or 'nothing'} -> version {self.new}"


def _yaml(indent: tuple[int, int, int]):
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never fold long lines (prompts)
    yaml.indent(mapping=indent[0], sequence=indent[1], offset=indent[2])
    return yaml


def _dump(yaml, data: Any) -> str:
    buffer = io.StringIO()
    yaml.dump(data, buffer)
    return buffer.getvalue()


def _split_documents(text: str) -> list[str]:
    """Split into chunks that concatenate back to text; each chunk after the first starts with its `---` line."""
    chunks: list[str] = []
    current: list[str] = []
    for line in text.splitlines(keepends=True):
        if _DOCUMENT_START.match(line.rstrip("\n")) and current:
            chunks.append("".join(current))
            current = []
        current.append(line)
    chunks.append("".join(current))
    return chunks


def _body(chunk: str) -> tuple[str, str]:
    """(the chunk's `---` line or '', the YAML after it)."""
    first, _, rest = chunk.partition("\n")
    if _DOCUMENT_START.match(first):
        return first + "\n", rest
    return "", chunk


def _plain(value: Any) -> Any:
    """ruamel's commented containers and scalar strings as plain dicts, lists and strs (for pydantic)."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    return value


def _load_chunk(path: Path, body: str, index: int) -> tuple[Any, tuple[int, int, int]]:
    """Load one document; also find the indentation that writes it back unchanged (default 2/4/2)."""
    from ruamel.yaml.error import YAMLError

    try:
        data = _yaml(_INDENTS[0]).load(body)
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1} of document {index + 1})" if mark else f" (document {index + 1})"
        raise GitOpsError(f"{path}: not valid YAML{where}: {getattr(error, 'problem', None) or error}") from None
    for indent in _INDENTS:
        if _dump(_yaml(indent), _yaml(indent).load(body)) == body:
            return data, indent
    return data, _INDENTS[0]


def _document_name(document: Any) -> str:
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return str(name) if name is not None else "<no name>"


@dataclass
class _Found:
    raw: bytes
    crlf: bool
    chunks: list[str]
    index: int
    name: str
    data: Any
    adapter: Any
    indent: tuple[int, int, int]


def _find(path: Path, name: str | None) -> _Found:
    """The one ModelDeployment document of path (called name, if given) with a name-based spec.adapter."""
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise GitOpsError(f"{path}: cannot read: {error}") from None
    crlf = "\r\n" in text
    if crlf:
        text = text.replace("\r\n", "\n")

    chunks = _split_documents(text)
    found: list[tuple[int, str, Any, tuple[int, int, int]]] = []
    names: list[str] = []
    for index, chunk in enumerate(chunks):
        _, body = _body(chunk)
        if not body.strip():
            continue
        data, indent = _load_chunk(path, body, index)
        if not isinstance(data, dict) or data.get("kind") != KIND:
            continue
        document_name = _document_name(data)
        names.append(document_name)
        if name is None or document_name == name:
            found.append((index, document_name, data, indent))
    if not found:
        if name is not None and names:
            raise GitOpsError(f"{path}: no ModelDeployment named {name!r} (the file holds: {', '.join(names)})")
        wanted = f" named {name!r}" if name is not None else ""
        raise GitOpsError(f"{path}: no {KIND}{wanted} in the file")
    if len(found) > 1:
        which = ", ".join(document_name for _, document_name, _, _ in found)
        raise GitOpsError(f"{path}: {len(found)} {KIND}s ({which}): say which one with a name")
    index, document_name, data, indent = found[0]

    spec = data.get("spec")
    adapter = spec.get("adapter") if isinstance(spec, dict) else None
    if not isinstance(adapter, dict):
        raise GitOpsError(f"{path}: {KIND}/{document_name}: spec.adapter is missing or not a mapping")
    if "uri" in adapter:
        raise GitOpsError(f"{path}: {KIND}/{document_name}: spec.adapter gives a uri, not an MLflow registered "
                          "model name: there is no version to pin")
    return _Found(raw, crlf, chunks, index, document_name, data, adapter, indent)


def adapter_name(path: Path, *, name: str | None = None) -> str:
    """spec.adapter.name (the MLflow registered model) of the ModelDeployment in path, e.g. for --from-alias."""
    found = _find(Path(path), name)
    if not found.adapter.get("name"):
        raise GitOpsError(f"{path}: {KIND}/{found.name}: spec.adapter.name is not set")
    return str(found.adapter["name"])


def pin_version(path: Path, version: str, *, name: str | None = None) -> Change:
    """Set spec.adapter.version of the ModelDeployment in path (the one called name) and drop spec.adapter.alias.

    Writes the file (atomically) only when something changed. Raises GitOpsError naming the file when it
    cannot be read or parsed, no ModelDeployment (or several, and no name) matches, or the result is invalid.
    """
    path = Path(path)
    version = str(version).strip()
    found = _find(path, name)
    data, adapter = found.data, found.adapter
    index, document_name, indent, chunks = found.index, found.name, found.indent, found.chunks
    old_version = None if adapter.get("version") is None else str(adapter["version"])
    old_alias = None if adapter.get("alias") is None else str(adapter["alias"])
    _set_version(adapter, version)

    try:
        parse_manifest(_plain(data))
    except SpecError as error:
        raise GitOpsError(f"{path}: {KIND}/{document_name}: pinning version {version!r} gives an invalid "
                          f"manifest: {error}") from None

    if old_version == version and old_alias is None:  # already pinned: the file is not written again
        return Change(path, document_name, old_version, old_alias, version, changed=False)
    separator, body = _body(chunks[index])
    new_body = _dump(_yaml(indent), data)
    if new_body == body:
        return Change(path, document_name, old_version, old_alias, version, changed=False)
    chunks[index] = separator + new_body
    new_text = "".join(chunks)
    if found.crlf:
        new_text = new_text.replace("\n", "\r\n")
    new_raw = new_text.encode("utf-8")
    if new_raw == found.raw:
        return Change(path, document_name, old_version, old_alias, version, changed=False)
    _write_atomically(path, new_raw)
    return Change(path, document_name, old_version, old_alias, version, changed=True)


def _set_version(adapter: Any, version: str) -> None:
    """Pin: write version as a quoted string where alias (or the old version) was; the alias goes, its comment stays."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

    old = adapter.get("version")
    style = SingleQuotedScalarString if isinstance(old, SingleQuotedScalarString) else DoubleQuotedScalarString
    if "version" in adapter:
        if str(old) != version or not isinstance(old, str):
            adapter["version"] = style(version)
    else:
        keys = list(adapter.keys())
        position = keys.index("alias") if "alias" in adapter else len(keys)
        adapter.insert(position, "version", style(version))
    if "alias" in adapter:
        comment = getattr(adapter, "ca", None)
        if comment is not None and "alias" in comment.items and "version" not in comment.items:
            # The alias line's end-of-line comment (and comment lines after it) move to the version line.
            comment.items["version"] = comment.items.pop("alias")
        del adapter["alias"]


def _write_atomically(path: Path, data: bytes) -> None:
    try:
        mode = path.stat().st_mode & 0o7777
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise GitOpsError(f"{path}: cannot write: {error}") from None


# --- git ---------------------------------------------------------------------------------------------


def _git(repo: Path, *args: str, config: tuple[str, ...] = (), check: bool = True) -> subprocess.CompletedProcess:
    command = ["git", *config, "-C", str(repo), *args]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise GitOpsError("git is not installed (or not on PATH)") from None
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise GitOpsError(f"{repo}: git {' '.join(args)} failed: {detail}")
    return result


def _locate(repo: Path, path: Path) -> Path:
    """An absolute path as it is; a relative one inside repo if it is there, else from the current directory."""
    if path.is_absolute():
        return path
    return (repo / path).resolve() if (repo / path).exists() else path.resolve()


def commit_on_branch(repo: Path, paths: list[Path], branch: str, message: str) -> str:
    """Commit exactly paths on branch (created from HEAD if new, else switched to); return the commit hash.

    Other changes in the working tree, staged or not, are left as they are and not committed.
    The author is git's configured identity; without one, tuneloop <tuneloop@localhost>.
    """
    repo = Path(repo)
    if not paths:
        raise GitOpsError(f"{repo}: nothing to commit: no paths given")
    if not repo.is_dir():
        raise GitOpsError(f"{repo}: not a directory")
    inside = _git(repo, "rev-parse", "--is-inside-work-tree", check=False)
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        raise GitOpsError(f"{repo}: not a git repository (or not its working tree)")
    if _git(repo, "check-ref-format", "--branch", branch, check=False).returncode != 0:
        raise GitOpsError(f"{repo}: {branch!r} is not a valid branch name")
    specs = [str(_locate(repo, Path(path))) for path in paths]
    if not _git(repo, "status", "--porcelain", "--", *specs).stdout.strip():
        raise GitOpsError(f"{repo}: nothing to commit: {', '.join(str(p) for p in paths)} unchanged")

    current = _git(repo, "symbolic-ref", "--quiet", "--short", "HEAD", check=False).stdout.strip()
    if current != branch:
        exists = _git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False).returncode == 0
        if exists:
            _git(repo, "switch", branch)
        else:
            _git(repo, "switch", "-c", branch)

    _git(repo, "add", "--", *specs)
    identity: tuple[str, ...] = ()
    if _git(repo, "config", "--get", "user.name", check=False).returncode != 0:
        identity += ("-c", "user.name=tuneloop")
    if _git(repo, "config", "--get", "user.email", check=False).returncode != 0:
        identity += ("-c", "user.email=tuneloop@localhost")
    # With pathspecs, `git commit` commits only those paths (--only): other staged changes stay staged.
    _git(repo, "commit", "--quiet", "--only", "-m", message, "--", *specs, config=identity)
    return _git(repo, "rev-parse", "HEAD").stdout.strip()


# --- MLflow ------------------------------------------------------------------------------------------


def resolve_alias(tracking_uri: str | None, model_name: str, alias: str) -> str:
    """The version (as a string, e.g. '7') that alias of the registered model points at now."""
    from tuneloop.registry.aliases import AliasNotFound, version_of_alias

    try:
        return version_of_alias(tracking_uri, model_name, alias)
    except AliasNotFound as error:
        raise GitOpsError(str(error)) from None
