"""Byte-level BPE: GPT-2's tokenizer (Radford et al. 2019, "Language Models are Unsupervised
Multitask Learners", Section 2.2), with Hugging Face ``tokenizer.json`` I/O (its incremental
trainer is in ``bpe_train.py``).

BPE (Sennrich et al. 2016; ``sennrich.py``) over *bytes* instead of characters: the base
vocabulary is the 256 byte values, so any text encodes with no unknown token. Three pieces:

1. **Byte → unicode table.** Merges and vocabularies are stored as strings, so each byte is
   shown as a printable character: the 188 bytes that are printable Latin-1 (``!``..``~``,
   ``¡``..``¬``, ``®``..``ÿ``) map to themselves, the other 68 (controls, space, ``\\xad``)
   map in order to ``chr(256 + n)``, n = 0, 1, … (so the space byte 0x20 is ``Ġ`` = U+0120).
2. **Pre-tokenisation.** Text is cut into words by GPT-2's regular expression
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``
   and merges never cross a word boundary: the paper prevents BPE "from merging across
   character categories", having seen vocabulary spent on ``dog.`` ``dog!`` ``dog?``; a
   leading space stays with the word that follows it (its one exception). Special tokens (``<|endoftext|>``) are cut out *before* this and
   are never split.
3. **Merges by rank.** The merges learned first have the lowest rank. Encoding a word:
   its UTF-8 bytes as table characters, then repeatedly merge every occurrence of the
   adjacent pair of lowest rank, until no adjacent pair has a rank. Words repeat, so the
   result is cached per word.

Decoding maps tokens back to bytes and decodes UTF-8 with ``errors="replace"`` (as GPT-2
does), so any id sequence decodes. Choice for lone surrogates (which ``str`` can hold but
UTF-8 cannot): like ``ByteTokenizer`` they are encoded with ``errors="surrogatepass"``
and a byte run that decodes with ``surrogatepass`` is decoded that way, so
``decode(encode(s)) == s`` for every Python string. GPT-2's ``encoder.py`` raises
``UnicodeEncodeError`` on them and the ``tokenizers`` library refuses such a string
(``TypeError``); on every other string the three agree. One known difference from
``tokenizers``: Unicode *version*. ``\\p{L}``/``\\p{N}`` come from the ``regex`` package's
tables, which are newer than the Rust library's, so a few code points unassigned in the
older tables (e.g. U+3D000) are letters to us and not to it, which changes the word split.

The trainer (``train_bpe``) is in ``bpe_train.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Mapping, Sequence

from lineage_jax.runs import atomic
from lineage_jax.tokenize.base import ENDOFTEXT, TokenizerError, check_text
from lineage_jax.tokenize.byte import _decode_bytes     # valid UTF-8 (surrogates kept), else errors="replace"
from lineage_jax.tokenize.sennrich import merge_word
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def bytes_to_unicode() -> dict[int, str]:
    """byte → printable character: printable Latin-1 bytes to themselves, the rest to 256 + n."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
ALPHABET = sorted(BYTE_TO_CHAR.values())              # code-point order, as the tokenizers trainer


def _compile(pattern: str):
    try:
        import regex                                      # \p{L} / \p{N}; a dependency of transformers
    except ImportError as e:                              # pragma: no cover
        raise ImportError("byte-level BPE needs the 'regex' package for \\p{L}: pip install regex") from e
    return regex.compile(pattern)


def split_isolated(compiled, text: str) -> list[str]:
    """Matches become pieces and so does any unmatched text between them (``Isolated``)."""
    out, pos = [], 0
    for m in compiled.finditer(text):
        if m.start() > pos:
            out.append(text[pos:m.start()])
        if m.end() > m.start():
            out.append(m.group())
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


def to_byte_chars(piece: str) -> str:
    return "".join(BYTE_TO_CHAR[b] for b in piece.encode("utf-8", errors="surrogatepass"))


def _token_bytes(token: str) -> bytes:
    """A vocabulary token's bytes; a token with a character outside the table is its UTF-8
    (the ``tokenizers`` ByteLevel decoder's rule)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in token)
    except KeyError:
        return token.encode("utf-8", errors="surrogatepass")


class ByteLevelBPETokenizer:
    """GPT-2 byte-level BPE behind the ``Tokenizer`` protocol.

    ``vocab``: token string (byte-table characters) → id; ``merges``: pairs in rank order;
    ``added_tokens``: special strings → id, matched in the text before pre-tokenisation.
    ``pattern=None`` means no regex split (each segment is one word). ``name`` is
    ``bpe-`` + a digest of everything that decides the ids (data caches key on it).
    """

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[tuple[str, str]],
                 added_tokens: Mapping[str, int] | None = None, pattern: str | None = GPT2_PATTERN,
                 add_prefix_space: bool = False, ignore_merges: bool = False,
                 specials: Iterable[str] | None = None):
        self.vocab = dict(vocab)
        self.merges = [tuple(m) for m in merges]
        self.ranks = {m: i for i, m in enumerate(self.merges)}
        self.added_tokens = dict(added_tokens or {})
        self.specials = set(self.added_tokens if specials is None else specials)
        self.pattern, self.add_prefix_space, self.ignore_merges = pattern, add_prefix_space, ignore_merges
        self._re = _compile(pattern) if pattern is not None else None
        self._added_re = None
        if self.added_tokens:
            alts = sorted(self.added_tokens, key=len, reverse=True)        # leftmost, then longest
            self._added_re = _compile("|".join(_escape(a) for a in alts))
        self.id_to_token = {i: t for t, i in self.vocab.items()}
        self.id_to_token.update({i: t for t, i in self.added_tokens.items()})
        self._id_bytes = {i: _token_bytes(t) for t, i in self.vocab.items() if self.id_to_token[i] == t}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._fast = None
        what = json.dumps([sorted(self.vocab.items()), self.merges, sorted(self.added_tokens.items()),
                           pattern, add_prefix_space, ignore_merges], ensure_ascii=False)
        self.name = "bpe-" + hashlib.sha256(what.encode("utf-8", errors="surrogatepass")).hexdigest()[:12]
        self._fingerprint = hashlib.sha256(json.dumps([what, sorted(self.specials)], ensure_ascii=False)
                                           .encode("utf-8", errors="surrogatepass")).hexdigest()

    # -- the protocol -------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return max(self.id_to_token) + 1 if self.id_to_token else 0

    def fingerprint(self) -> str:
        """SHA-256 of everything that decides the ids (vocab, merges, added and special tokens, the split
        pattern and flags), not of the file's formatting: a run records it to refuse another tokenizer."""
        return self._fingerprint

    @property
    def eos_id(self) -> int:
        if ENDOFTEXT in self.added_tokens:
            return self.added_tokens[ENDOFTEXT]
        for tok, i in self.added_tokens.items():
            if tok in self.specials:
                return i
        raise ValueError("this BPE tokenizer has no special token to use as eos (train or save it with '<|endoftext|>')")

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for segment, added in self._split_added(check_text(text)):
            if added:
                ids.append(self.added_tokens[segment])
                continue
            for word in self.pre_tokenize(segment):
                ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        out, run = [], bytearray()
        for i in ids:
            i = int(i)
            b = self._id_bytes.get(i)
            if b is not None:
                run.extend(b)
                continue
            tok = self.id_to_token.get(i)
            if tok is None:
                raise ValueError(f"token id {i} is outside the BPE tokenizer's vocabulary [0, {self.vocab_size})")
            out.append(_decode_bytes(run))                  # an added/special token: its text as is
            run = bytearray()
            out.append(tok)
        out.append(_decode_bytes(run))
        return "".join(out)

    # -- the pieces ---------------------------------------------------------------------
    def _split_added(self, text: str) -> list[tuple[str, bool]]:
        if self._added_re is None:
            return [(text, False)] if text else []
        out, pos = [], 0
        for m in self._added_re.finditer(text):
            if m.start() > pos:
                out.append((text[pos:m.start()], False))
            out.append((m.group(), True))
            pos = m.end()
        if pos < len(text):
            out.append((text[pos:], False))
        return out

    def pre_tokenize(self, segment: str) -> list[str]:
        """A segment (no special tokens in it) → its words, as byte-table strings."""
        if self.add_prefix_space and not segment.startswith(" "):
            segment = " " + segment
        pieces = split_isolated(self._re, segment) if self._re is not None else [segment]
        return [to_byte_chars(p) for p in pieces]

    def bpe(self, word: str) -> list[str]:
        """One word (byte-table string) → its tokens: merge the lowest-rank pair, repeat."""
        if self.ignore_merges and word in self.vocab:
            return [word]
        symbols = list(word)
        ranks = self.ranks
        while len(symbols) > 1:
            best, best_rank = None, None
            for pair in zip(symbols, symbols[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            symbols = list(merge_word(symbols, best))      # every occurrence, left to right
        return symbols

    def _encode_word(self, word: str) -> tuple[int, ...]:
        ids = self._cache.get(word)
        if ids is None:
            # a byte missing from the vocabulary is dropped, as tokenizers' BPE without unk does
            ids = tuple(self.vocab[t] for t in self.bpe(word) if t in self.vocab)
            if len(self._cache) < 1_000_000:
                self._cache[word] = ids
        return ids

    # -- fast path through the tokenizers library ----------------------------------------
    def fast(self):
        """The same tokenizer as a ``tokenizers.Tokenizer`` (Rust), built from ``to_json``."""
        if self._fast is None:
            try:
                import tokenizers
            except ImportError as e:
                raise ImportError("the fast path needs the 'tokenizers' package: pip install -e '.[ref]'") from e
            self._fast = tokenizers.Tokenizer.from_str(self.to_json())
        return self._fast

    def encode_batch(self, texts: Sequence[str], fast: bool = False) -> list[list[int]]:
        """``fast=True`` encodes in Rust (multi-threaded), the same ids as ``encode`` on every
        string ``tokenizers`` accepts (it refuses lone surrogates)."""
        texts = [check_text(t) for t in texts]
        if fast:
            return [e.ids for e in self.fast().encode_batch(texts, add_special_tokens=False)]
        return [self.encode(t) for t in texts]

    # -- tokenizer.json -----------------------------------------------------------------
    def to_json(self) -> str:
        if self.pattern == GPT2_PATTERN:
            pre = {"type": "ByteLevel", "add_prefix_space": self.add_prefix_space, "trim_offsets": True, "use_regex": True}
        else:
            byte_level = {"type": "ByteLevel", "add_prefix_space": self.add_prefix_space, "trim_offsets": True, "use_regex": False}
            pre = byte_level if self.pattern is None else {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": self.pattern}, "behavior": "Isolated", "invert": False},
                byte_level]}
        doc = {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": t in self.specials}
                             for t, i in sorted(self.added_tokens.items(), key=lambda kv: kv[1])],
            "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.ignore_merges,
                      # added tokens sit in the model's vocab too (tokenizers renumbers them otherwise)
                      "vocab": dict(sorted({**self.added_tokens, **self.vocab}.items(), key=lambda kv: kv[1])),
                      "merges": [list(m) for m in self.merges]},
        }
        return json.dumps(doc, ensure_ascii=False, indent=2)

    def save(self, path: str) -> str:
        """Write ``tokenizer.json`` (a directory gets ``path/tokenizer.json``); returns the file."""
        if os.path.isdir(path) or not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, "tokenizer.json")
        atomic.write_bytes(path, self.to_json().encode("utf-8"))
        return path


def _escape(s: str) -> str:
    import regex
    return regex.escape(s)


def load_tokenizer_json(path: str) -> ByteLevelBPETokenizer:
    """Read a byte-level BPE ``tokenizer.json`` (written by ``tokenizers`` or by ``save``); a file that is
    not one (not UTF-8, not JSON, another model type, fields missing) is a one-line ``TokenizerError``."""
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    where = f"{path}:"
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{where} not a tokenizer.json (not UTF-8 text: {e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{where} not a tokenizer.json (not valid JSON: {e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise TokenizerError(f"{where} not a tokenizer.json (the top level is a {type(doc).__name__}, not an object)")
    try:
        return _from_doc(doc, where)
    except TokenizerError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError) as e:   # a field missing or of the wrong kind
        raise TokenizerError(f"{where} not a byte-level BPE tokenizer.json ({type(e).__name__}: {e})") from None


def _from_doc(doc: dict, where: str) -> ByteLevelBPETokenizer:
    model = doc.get("model") or {}
    if model.get("type", "BPE") != "BPE" or "merges" not in model:
        raise TokenizerError(f"{where} model.type={model.get('type')!r}: only byte-level BPE tokenizer.json files load here")
    for key in ("continuing_subword_prefix", "end_of_word_suffix", "dropout"):
        if model.get(key):
            raise TokenizerError(f"{where} model.{key}={model[key]!r} is not supported (byte-level BPE has none)")
    if model.get("byte_fallback"):
        raise TokenizerError(f"{where} model.byte_fallback=true is a SentencePiece-style BPE, not byte-level")
    if doc.get("normalizer") is not None:
        raise TokenizerError(f"{where} normalizer={doc['normalizer'].get('type')!r} is not supported (byte-level BPE needs none)")
    post = doc.get("post_processor")
    if post is not None and post.get("type") != "ByteLevel":
        raise TokenizerError(f"{where} post_processor={post.get('type')!r} is not supported (it would add tokens)")
    pattern, add_prefix_space = _read_pre_tokenizer(doc.get("pre_tokenizer"), where)
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    added, specials = {}, set()
    for t in doc.get("added_tokens") or []:
        if t.get("lstrip") or t.get("rstrip") or t.get("single_word"):
            raise TokenizerError(f"{where} added token {t['content']!r}: lstrip/rstrip/single_word are not supported")
        added[t["content"]] = int(t["id"])
        if t.get("special"):
            specials.add(t["content"])
    vocab = {t: i for t, i in model["vocab"].items() if t not in added or added[t] != i}
    return ByteLevelBPETokenizer(vocab, merges, added, pattern=pattern, add_prefix_space=add_prefix_space,
                                 ignore_merges=bool(model.get("ignore_merges")), specials=specials)


def _read_pre_tokenizer(pre, where) -> tuple[str | None, bool]:
    if pre is None:
        raise TokenizerError(f"{where} pre_tokenizer is missing: not a byte-level BPE (expected ByteLevel)")
    if pre.get("type") == "ByteLevel":
        return (GPT2_PATTERN if pre.get("use_regex", True) else None), bool(pre.get("add_prefix_space"))
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if (steps and len(steps) == 2 and steps[0].get("type") == "Split" and steps[1].get("type") == "ByteLevel"
            and not steps[1].get("use_regex", True) and steps[0].get("behavior") == "Isolated"
            and not steps[0].get("invert") and "Regex" in steps[0].get("pattern", {})):
        return steps[0]["pattern"]["Regex"], bool(steps[1].get("add_prefix_space"))
    raise TokenizerError(f"{where} pre_tokenizer={pre.get('type')!r}: allowed ByteLevel, or Sequence[Split(Regex, Isolated), ByteLevel(use_regex=false)]")


__all__ = ["GPT2_PATTERN", "ENDOFTEXT", "bytes_to_unicode", "ByteLevelBPETokenizer", "load_tokenizer_json",
           "split_isolated"]
