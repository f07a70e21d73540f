"""Loading untrusted program files: every hostile file fails fast with a clear ProgramValidationError."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from stepbridge import loader
from stepbridge.errors import ProgramValidationError
from stepbridge.loader import MAX_DEPTH, MAX_FILE_BYTES, load_program, parse_document

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RAG = (EXAMPLES / "rag_qa.yaml").read_text()


def fails(source: str | bytes | Path, match: str, *, filename: str | None = None,
          line: int | None = None) -> ProgramValidationError:
    """Assert that loading ``source`` raises ProgramValidationError mentioning ``match`` (in the issue and in
    the error text), at ``line`` if given. How fast that happens is measured in bench/bench_hostile.py,
    never asserted here: the limits are checked while parsing, which the messages below pin down."""
    with pytest.raises(ProgramValidationError) as info:
        if isinstance(source, Path):
            load_program(source)
        elif isinstance(source, bytes) or filename:
            parse_document(source, filename=filename)
        else:
            load_program(source)
    err = info.value
    assert any(match in i.message for i in err.issues), [str(i) for i in err.issues]
    assert match in str(err)
    if line is not None:
        assert any(i.line == line for i in err.issues if match in i.message), [str(i) for i in err.issues]
    return err


def write(tmp_path: Path, text: str | bytes, name: str = "prog.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- hostile files ---------------------------------------------------------------------------------


def test_yaml_syntax_error_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "stepbridge: 1\nname: x\nmodules: {a: [1, 2}\nsteps: []\n")
    err = fails(path, "YAML syntax error", line=3)
    assert "(line 3, column" in str(err)


def test_bad_indentation_is_a_syntax_error(tmp_path: Path) -> None:
    fails(write(tmp_path, "stepbridge: 1\n  name: x\n name: y\n"), "YAML syntax error")


def test_alias_bomb_billion_laughs(tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 10):
        prev, cur = chr(ord("a") + i - 1), chr(ord("a") + i)
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    fails(write(tmp_path, "\n".join(levels) + "\n"), "aliases", line=2)


def test_a_single_alias_is_refused_too() -> None:
    fails("stepbridge: 1\nname: &n x\ndescription: *n\n", "aliases", line=3)


DEEP = "/a" * MAX_DEPTH  # the pointer of the first value past the limit in a chain of {a: ...}


@pytest.mark.parametrize(
    ("text", "name", "outer", "exact"),
    [
        ("[" * 10_000 + "]" * 10_000, "flow.yaml", "", "/0" * MAX_DEPTH),
        ("x: " + "{a: " * 10_000 + "1" + "}" * 10_000, "flow_map.yaml", "/x", "/x" + DEEP[:-2]),
        ("- " * 10_000 + "x\n", "block_seq.yaml", "", "/0" * MAX_DEPTH),
        ("".join(" " * i + "a:\n" for i in range(0, 1200)), "block_map.yaml", "", DEEP),  # a mapping per indent
        ("[" * 10_000 + "]" * 10_000, "deep.json", "", "/0" * MAX_DEPTH),
        ('{"a":' * 10_000 + "1" + "}" * 10_000, "deep_obj.json", "", DEEP),
        ("x: [1, " + "[" * 10_000 + "]" * 10_000 + "]", "inner.yaml", "/x/1", "/x/1" + "/0" * (MAX_DEPTH - 2)),
        ("{" + '"' + "k" * 1100 + '": ' + "[" * 100 + "]" * 100 + "}", "long_key.json", "", "/" + "k" * 1100),
    ],
)
@pytest.mark.parametrize("parser", ["libyaml", "pure-python", "stricter"])
def test_ten_thousand_deep_nesting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, name: str,
                                   outer: str, exact: str, parser: str) -> None:
    """Our typed error, pointing into the too-deep value, whichever YAML parser reads the file and whatever
    limit it has of its own: libyaml refuses 1,000 levels itself while looking ahead (we then point at the
    value it was reading), pure-Python PyYAML has no limit, and a future release may refuse earlier with
    other words (``stricter``: 70 levels, its own message)."""
    if parser != "libyaml":
        monkeypatch.setattr(loader, "_Loader", StricterLoader if parser == "stricter" else yaml.SafeLoader)
    err = fails(write(tmp_path, text, name), f"nesting deeper than {MAX_DEPTH} levels")
    assert len(err.issues) == 1
    pointer = err.issues[0].pointer
    assert pointer.startswith(outer) and exact.startswith(pointer), (pointer, outer)


class StricterLoader(yaml.SafeLoader):
    """Pure-Python PyYAML whose scanner refuses flow nesting past 70 levels with its own wording."""

    def fetch_flow_collection_start(self, token_class: type) -> None:  # type: ignore[override]
        if self.flow_level >= 70:
            raise yaml.scanner.ScannerError(None, None, "flow too deep for this parser", self.get_mark())
        super().fetch_flow_collection_start(token_class)  # type: ignore[misc]


def test_nesting_just_under_the_limit_is_only_a_shape_problem() -> None:
    data, _ = parse_document("x: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1))
    depth, value = 0, data["x"]
    while value:
        value = value[0]
        depth += 1
    assert depth == MAX_DEPTH - 2


def test_fifty_megabyte_string(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.write(b"stepbridge: 1\nname: big\ndescription: '")
        chunk = b"x" * (1 << 20)
        for _ in range(50):
            fh.write(chunk)
        fh.write(b"'\n")
    err = fails(path, "MB; the limit is")
    assert "keep corpora and data in separate files" in str(err)


def test_oversized_text_and_bytes_are_refused_before_parsing() -> None:
    big = "description: '" + "x" * (MAX_FILE_BYTES + 1) + "'\n"
    fails(big.encode(), "the limit is", filename="p.yaml")
    fails(big, "the limit is", filename="p.yaml")


def test_many_small_values_hit_the_node_limit(tmp_path: Path) -> None:
    text = "x: [" + "1," * 1_000_000 + "1]\n"
    assert len(text) < MAX_FILE_BYTES
    fails(write(tmp_path, text), f"more than {loader.MAX_NODES} values")


def test_unknown_top_level_key_with_suggestion(tmp_path: Path) -> None:
    err = fails(write(tmp_path, RAG.replace("modules:", "modulez:")), "unknown key 'modulez'")
    issue = next(i for i in err.issues if "modulez" in i.message)
    assert issue.pointer == "/modulez"
    assert issue.suggestion == "modules"
    assert issue.line == RAG.splitlines().index("modules:") + 1


def test_unknown_nested_key(tmp_path: Path) -> None:
    err = fails(write(tmp_path, RAG.replace("    k: 3", "    k: 3\n    kk: 4")), "unknown key 'kk'")
    assert any(i.pointer == "/modules/search/kk" for i in err.issues)


def test_unknown_module_type(tmp_path: Path) -> None:
    err = fails(write(tmp_path, RAG.replace("type: chain_of_thought", "type: python_eval")),
                "unknown module type 'python_eval'")
    assert any(i.pointer == "/modules/answer/type" for i in err.issues)


def test_unknown_step_type(tmp_path: Path) -> None:
    err = fails(write(tmp_path, RAG.replace("  - call: search", "  - exec: search")), "unknown step type")
    issue = next(i for i in err.issues if "unknown step type" in i.message)
    assert issue.pointer == "/steps/0"
    assert issue.line == RAG.splitlines().index("  - call: search") + 1


@pytest.mark.parametrize(
    ("text", "pointer"),
    [
        ("stepbridge: 1\nname: a\nname: b\n", "/name"),
        ("a: {x: 1, x: 2}\n", "/a/x"),
        ("a:\n  - {k: 1}\n  - {k: 1, k: 2}\n", "/a/1/k"),
        ("1: a\n'1': b\n", "/1"),
    ],
)
def test_duplicate_keys(text: str, pointer: str) -> None:
    err = fails(text, "duplicate key")
    assert err.issues[0].pointer == pointer


# libyaml refuses implicit keys longer than 1024 characters, which JSON allows: such a file is parsed by
# the json module instead, and that path must be exactly as strict.
LONG_KEY = '"' + "k" * 1100 + '"'


def test_json_that_yaml_cannot_read_falls_back_to_the_json_module() -> None:
    data, _ = parse_document("{" + LONG_KEY + ': {"a": [1, 2.5, null]}}', filename="p.json")
    assert data == {"k" * 1100: {"a": [1, 2.5, None]}}


def test_duplicate_keys_in_json_even_when_json_falls_back_from_yaml() -> None:
    fails('{"stepbridge": 1, "name": "a", "name": "b"}', "duplicate key", filename="p.json")
    fails("{" + LONG_KEY + ": 1, " + LONG_KEY + ": 2}", "duplicate key", filename="p.json")


def test_non_utf8(tmp_path: Path) -> None:
    fails(write(tmp_path, b"stepbridge: 1\nname: caf\xe9\n"), "not UTF-8")
    fails(write(tmp_path, "name: x".encode("utf-16"), "u16.yaml"), "not UTF-8")


def test_utf8_bom_is_fine(tmp_path: Path) -> None:
    (tmp_path / "data").symlink_to(EXAMPLES / "data")
    assert load_program(write(tmp_path, b"\xef\xbb\xbf" + RAG.encode())).name == "rag_qa"


@pytest.mark.parametrize("text", [b"", b"   \n\n", b"# only a comment\n"])
def test_empty_file(tmp_path: Path, text: bytes) -> None:
    fails(write(tmp_path, text), "the file is empty")


def test_a_document_of_nothing_is_not_a_program(tmp_path: Path) -> None:
    fails(write(tmp_path, "---\n...\n"), "a program is a mapping")


@pytest.mark.parametrize("text", ["a: 1\n---\nb: 2\n", "---\na: 1\n---\na: 1\n", RAG + "---\n" + RAG])
def test_multiple_documents(text: str) -> None:
    fails(text, "exactly one YAML document")


@pytest.mark.parametrize(
    "text",
    [
        "x: !!python/object/apply:os.system ['echo pwned']\n",
        "x: !!python/object:builtins.dict {a: 1}\n",
        "x: !!python/name:os.system ''\n",
        "x: !!python/tuple [1, 2]\n",
        "x: !!binary aGVsbG8=\n",
        "x: !!set {a, b}\n",
        "x: !!omap [a: 1]\n",
        "x: !custom 3\n",
        "x: !custom {a: 1}\n",
        "!!python/object:foo\na: 1\n",
    ],
)
def test_yaml_tags_are_refused(text: str) -> None:
    err = fails(text, "is not allowed in a program file")
    assert "YAML tag" in str(err)


def test_standard_tags_are_fine() -> None:
    data, _ = parse_document("a: !!str 1\nb: !!int '2'\nc: !!float 1\nd: !!map {x: !!seq [1]}\ne: !!null ''\n")
    assert data == {"a": "1", "b": 2, "c": 1.0, "d": {"x": [1]}, "e": None}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("x: " + "9" * 5000 + "\n", "is too large"),      # more digits than Python converts
        ("x: !!int abc\n", "invalid int value"),
        ("x: !!bool maybe\n", "invalid bool value"),
        ("x: !!float abc\n", "invalid float value"),
        ("x: !!int\n", "invalid int value"),
        ("x: !!int ''\n", "invalid int value"),
    ],
)
def test_bad_scalar_values_are_clear_errors(text: str, match: str) -> None:
    fails(text, match, line=1)


def test_huge_integer_in_json_fallback_is_a_clear_error() -> None:
    fails("{" + LONG_KEY + ": " + "9" * 5000 + "}", "is too large", filename="p.json")


@pytest.mark.parametrize("literal", ["0x" + "f" * 5000, "0b" + "1" * 20_000, "0" + "7" * 6000, "1" + ":59" * 3000,
                                     "-" + "9" * 4301, "!!int " + "9" * 5000])
def test_huge_integer_literals_in_any_base_are_refused_with_their_pointer(literal: str) -> None:
    err = fails(f"stepbridge: 1\nname: x\nlm:\n  max_tokens: {literal}\n", "is too large", line=4)
    assert [i.pointer for i in err.issues] == ["/lm/max_tokens"]


def test_nan_constant_in_json_is_refused() -> None:
    fails("{" + LONG_KEY + ": NaN}", "JSON has no NaN", filename="p.json")
    fails("{" + LONG_KEY + ": -Infinity}", "JSON has no NaN", filename="p.json")


def test_json_syntax_error_in_fallback_reports_line_and_column() -> None:
    err = fails("{" + LONG_KEY + ":\n 1,,}", "JSON syntax error", filename="p.json", line=2)
    assert "column" in str(err)


def test_json_fallback_still_counts_nodes() -> None:
    fails("{" + LONG_KEY + ": [" + "1," * (loader.MAX_NODES + 5) + "1]}", "values in one program file",
          filename="p.json")


def test_nan_and_infinity_in_yaml_are_refused_by_validation(tmp_path: Path) -> None:
    text = RAG.replace("k: 3", "k: 3\n    retriever_option: .nan").replace("retriever_option: .nan", "")
    text = text.replace("{kind: bm25, corpus: data/wiki.jsonl}", "{kind: bm25, corpus: data/wiki.jsonl, b: .inf}")
    err = fails(text, "no NaN or infinity")
    assert any(i.pointer == "/modules/search/retriever/b" for i in err.issues)


def test_dates_stay_text_and_impossible_dates_do_not_crash() -> None:
    data, _ = parse_document("a: 2024-01-02\nb: 2024-13-45\nc: 2024-01-02 10:00:00\n")
    assert data == {"a": "2024-01-02", "b": "2024-13-45", "c": "2024-01-02 10:00:00"}


def test_collection_keys_are_refused() -> None:
    fails("? [a, b]\n: 1\n", "mapping keys must be plain scalars")
    fails("{[a]: 1}\n", "mapping keys must be plain scalars")


def test_control_characters_are_refused() -> None:
    fails("name: a\x00b\n", "YAML error")


def test_missing_file() -> None:
    fails(Path("/nonexistent/prog.yaml"), "cannot read program file")


def test_parsing_keeps_no_values_alive_between_files() -> None:
    parse_document("a: " + "x" * 1000 + "\nb: [1, 2.5, true, null]\n")
    assert not loader._constructor.constructed_objects


# -- random damage ---------------------------------------------------------------------------------

JSON_RAG = json.dumps(yaml.safe_load(RAG))
damage = st.one_of(st.text(max_size=4), st.sampled_from(
    ["&a ", "*a", "!!python/object ", "\t", "{", "[", "- ", ": ", "---\n", "? ", "!!int ", "!!bool ", ".nan", "\ufeff",
     "%YAML 1.1\n", "'", '"', "\\", "|\n", ">\n", "\x00", "9" * 5000]))


@st.composite
def damaged_files(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from([RAG, JSON_RAG]))
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        i = draw(st.integers(min_value=0, max_value=len(text)))
        j = draw(st.integers(min_value=i, max_value=min(len(text), i + 10)))
        text = text[:i] + draw(damage) + text[j:]
    return text


@given(damaged_files())
@settings(max_examples=200, deadline=None)
def test_damaged_files_raise_only_program_validation_error(text: str) -> None:
    try:
        load_program(text).content_hash  # noqa: B018
    except ProgramValidationError as exc:
        assert exc.issues
    for name in ("p.json", "p.yaml"):
        with contextlib.suppress(ProgramValidationError):
            parse_document(text.encode("utf-8", "surrogatepass"), filename=name)


# -- the line map ----------------------------------------------------------------------------------


def test_line_map_points_at_keys_and_list_items() -> None:
    _, lines = parse_document(RAG)
    text_lines = RAG.splitlines()

    def line(text: str) -> int:
        return next(i for i, t in enumerate(text_lines, 1) if text in t)

    assert lines[""] == 1
    assert lines["/name"] == line("name: rag_qa")
    assert lines["/modules/answer/instructions"] == line("instructions:")
    assert lines["/steps/0"] == line("- call: search")
    assert lines["/steps/1"] == line("- call: answer")  # where the item starts, not where it ends
    assert lines["/steps/2"] == line("- return:")
    assert lines["/steps/1/with/question"] == line("with: {context: $found.passages")


def test_pointers_escape_slash_and_tilde() -> None:
    _, lines = parse_document("a/b:\n  c~d: 1\n")
    assert lines["/a~1b/c~0d"] == 2


# -- the happy path --------------------------------------------------------------------------------


def test_json_and_yaml_files_load_to_the_same_program(tmp_path: Path) -> None:
    program = load_program(EXAMPLES / "rag_qa.yaml")
    (tmp_path / "data").symlink_to(EXAMPLES / "data")
    as_json = write(tmp_path, json.dumps(yaml.safe_load(RAG), indent="\t"), "rag.json")
    compact = write(tmp_path, json.dumps(yaml.safe_load(RAG)), "compact.json")
    assert load_program(as_json).content_hash == program.content_hash
    assert load_program(compact).content_hash == program.content_hash
    assert load_program(compact)._lines  # the YAML path kept the line map


def test_json_with_escaped_surrogate_pairs() -> None:
    data, _ = parse_document('{"a": "\\ud83d\\ude00"}', filename="p.json")
    assert data == {"a": "\U0001f600"}


def test_text_and_dict_sources() -> None:
    assert load_program(RAG).content_hash == load_program(yaml.safe_load(RAG)).content_hash
    assert load_program(RAG).base_dir == Path.cwd()


def test_base_dir_is_the_file_directory_and_checks_corpus(tmp_path: Path) -> None:
    path = write(tmp_path, RAG)
    err = fails(path, "corpus file not found")
    assert any(i.pointer == "/modules/search/retriever/corpus" for i in err.issues)
    assert load_program(EXAMPLES / "rag_qa.yaml").base_dir == EXAMPLES
