"""Class cards (``edge_app.runtime.cards``): the cards file read and checked, and a card looked up with its fallbacks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import POTATO_CLASSES, REPO, potato_subset

from edge_app.runtime import cards
from edge_app.runtime.cards import KEY, card, for_labels, languages, merge, read_cards
from edge_app.runtime.dataset import scan
from edge_app.runtime.errors import CardsError, EdgeclsError, LabelsError

LABELS = list(POTATO_CLASSES)
GOOD = """\
Potato___Early_blight:
  en: {name: Early blight, description: Dark rings on older leaves., advice: Remove the lowest leaves.}
  sw: {name: Baka jani la mapema, advice: Ondoa majani ya chini.}
  pt-br: {name: Pinta preta}
Potato___Late_blight:
  en: {name: "  Late blight  "}
"""


def write(tmp_path: Path, text: str, name: str = "classes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_cards_file_becomes_the_metadata_value(tmp_path):
    found = read_cards(write(tmp_path, GOOD), LABELS)
    assert KEY == "cards"
    assert found == {
        "Potato___Early_blight": {
            "en": {"name": "Early blight", "description": "Dark rings on older leaves.",
                   "advice": "Remove the lowest leaves."},
            "pt_BR": {"name": "Pinta preta"},  # the code as Babel spells it
            "sw": {"name": "Baka jani la mapema", "advice": "Ondoa majani ya chini."},
        },
        "Potato___Late_blight": {"en": {"name": "Late blight"}},  # stripped; absent fields left out
    }
    assert list(found) == LABELS[:2]  # in the labels' order
    assert languages(found) == ["en", "pt_BR", "sw"]
    assert read_cards(write(tmp_path, "{}"), LABELS) == {}  # no cards


def test_a_card_falls_back_to_the_base_language_then_english_then_none(tmp_path):
    found = read_cards(write(tmp_path, GOOD), LABELS)
    sw = card(found, "Potato___Early_blight", "sw")
    assert sw == {"name": "Baka jani la mapema", "description": "", "advice": "Ondoa majani ya chini.", "lang": "sw"}
    assert card(found, "Potato___Early_blight", "sw_KE")["lang"] == "sw"  # region -> its language
    assert card(found, "Potato___Early_blight", "pt-BR")["name"] == "Pinta preta"
    assert card(found, "Potato___Early_blight", "pt_br")["lang"] == "pt_BR"
    assert card(found, "Potato___Early_blight", "pt")["lang"] == "en"  # pt_BR is not pt
    assert card(found, "Potato___Late_blight", "sw") == {"name": "Late blight", "description": "", "advice": "",
                                                          "lang": "en"}
    assert card(found, "Potato___healthy", "en") is None  # no card: the caller shows the label
    assert card(None, "Potato___healthy", "en") is None and card({}, "x", "en") is None


def test_cards_from_elsewhere_that_are_not_well_formed_count_as_absent():
    odd = {"a": "text", "b": {"en": "text"}, "c": {"en": {"name": ""}}, "d": {"en": {"name": 7}},
           "e": {"en": {"name": "E", "advice": ["x"]}}, 5: {"en": {"name": "five"}}}
    assert [card(odd, label, "en") for label in "abcd"] == [None] * 4
    assert card(odd, "e", "en") == {"name": "E", "description": "", "advice": "", "lang": "en"}
    assert card("not cards", "a", "en") is None and languages("not cards") == [] and for_labels(None, ["a"]) == {}
    assert languages(odd) == ["en"]


def test_for_labels_and_merge():
    base = {"a": {"en": {"name": "A"}, "sw": {"name": "Aa"}}, "b": {"en": {"name": "B"}}}
    assert for_labels(base, ["c", "b"]) == {"b": {"en": {"name": "B"}}}
    assert for_labels(base, []) == {}
    merged = merge(base, {"a": {"en": {"name": "A!"}}, "c": {"en": {"name": "C"}}})
    assert merged == {"a": {"en": {"name": "A!"}, "sw": {"name": "Aa"}}, "b": {"en": {"name": "B"}},
                      "c": {"en": {"name": "C"}}}
    assert base["a"]["en"] == {"name": "A"}  # not changed in place


@pytest.mark.parametrize("text, needles", [
    ("a: [b\n  c: {", ["is not valid YAML", "line 2"]),
    ("- a\n- b\n", ["is not a mapping", "a list"]),
    ("", ["is not a mapping", "nothing"]),
    ("Potato___Early_Blight:\n  en: {name: x}\n", ["'Potato___Early_Blight' is not one of the classes",
                                                   "did you mean 'Potato___Early_blight'"]),
    ("Tomato:\n  en: {name: x}\n", ["'Tomato' is not one of the classes", "'Potato___healthy'"]),
    ("Potato___healthy:\n  sw: {name: x}\n", ["has no 'en' card (missing language)", "add 'en: {name: ...}'"]),
    ("Potato___healthy:\n  en: {name: x}\n  xx: {name: y}\n", ["'xx' is not a valid language", "pt_BR"]),
    ("Potato___healthy:\n  en: {name: x}\n  en_ZZ: {name: y}\n", ["'en_ZZ' is not a valid language"]),
    ("Potato___healthy:\n  en: {name: x}\n  EN: {name: y}\n", ["two cards for language 'en'"]),
    ("Potato___healthy:\n  en: {name: x, advice: [a, b]}\n", ["advice is a list, not text"]),
    ("Potato___healthy:\n  en: {name: x, advise: b}\n", ["unknown field 'advise'", "did you mean 'advice'"]),
    ("Potato___healthy:\n  en: {name: '  '}\n", ["no name"]),
    ("Potato___healthy:\n  en: {description: d}\n", ["no name"]),
    ("Potato___healthy:\n  en:\n", ["the card is nothing"]),
    ("Potato___healthy:\n  en: {name: " + "x" * 61 + "}\n", ["name is 61 characters, over the 60"]),
    ("Potato___healthy:\n  en: {name: x, description: " + "d" * 201 + "}\n", ["over the 200"]),
    ("Potato___healthy:\n  en: {name: x, advice: " + "a" * 401 + "}\n", ["over the 400"]),
    ("Potato___healthy:\n  en:\n    name: x\n    advice: |\n      one\n      two\n", ["line break"]),
    ("Potato___healthy:\n  en: {name: x}\nPotato___healthy:\n  en: {name: y}\n", ["given twice", "keep one"]),
])
def test_a_bad_cards_file_is_one_line_naming_the_file(tmp_path, text, needles):
    path = write(tmp_path, text)
    with pytest.raises(CardsError) as caught:
        read_cards(path, LABELS, "--classes")
    message = str(caught.value)
    assert message.startswith(f"--classes {path}") and "\n" not in message
    for needle in needles:
        assert needle in message
    assert isinstance(caught.value, LabelsError) and caught.value.exit_code == 2  # bad input: exit 2


def test_the_limits_are_inclusive(tmp_path):
    text = (f"Potato___healthy:\n  en: {{name: {'n' * 60}, description: {'d' * 200}, advice: {'a' * 400}}}\n")
    assert len(read_cards(write(tmp_path, text), LABELS)["Potato___healthy"]["en"]["advice"]) == 400


def test_every_value_is_text(tmp_path):
    """YAML 1.1 reads `no` as false and `007` as 7: a Norwegian card and a class named 007 stay what they say."""
    text = "'007':\n  en: {name: 007}\n  no: {name: yes}\n"
    assert read_cards(write(tmp_path, text), ["007"]) == {"007": {"en": {"name": "007"}, "no": {"name": "yes"}}}


def test_the_file_is_checked_before_it_is_read(tmp_path):
    with pytest.raises(CardsError, match="does not exist"):
        read_cards(tmp_path / "missing.yaml", LABELS)
    with pytest.raises(CardsError, match="is a folder"):
        read_cards(tmp_path, LABELS)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(2_000_000)  # sparse: over the 1 MB cap, refused before a byte is read
    with pytest.raises(CardsError, match="over the 1 MB"):
        read_cards(big, LABELS)
    (tmp_path / "latin1.yaml").write_bytes("Potato___healthy:\n  en: {name: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(CardsError, match="UTF-8"):
        read_cards(tmp_path / "latin1.yaml", LABELS)


def test_default_file_is_data_classes_yaml(tmp_path):
    assert cards.default_file(tmp_path) is None
    (tmp_path / "classes.yaml").mkdir()  # a class folder of that name is a class, not a cards file
    assert cards.default_file(tmp_path) is None
    (tmp_path / "classes.yaml").rmdir()
    write(tmp_path, GOOD)
    assert cards.default_file(tmp_path) == tmp_path / "classes.yaml"


def test_a_classes_yaml_beside_the_class_folders_is_not_a_class(tmp_path):
    data = potato_subset(tmp_path / "data", per_class=4)
    write(data, GOOD)
    assert scan(data, val_split=0.0, test_split=0.0, verify=False).labels == LABELS


def test_the_docs_example_is_a_valid_cards_file(tmp_path):
    text = (REPO / "docs" / "cards.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)
    found = read_cards(write(tmp_path, example), LABELS)
    assert list(found) == LABELS and languages(found) == ["en", "sw"]
    assert all(card(found, label, "sw")["lang"] == "sw" for label in LABELS)


def test_the_module_imports_no_numpy():
    """The kiosk's page and its tests read cards without numpy: stdlib, PyYAML, Babel and the runtime's errors/files."""
    import ast
    import sys

    tree = ast.parse((REPO / "edge_app" / "runtime" / "cards.py").read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    outside = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert outside <= {"yaml", "babel", "edge_app.runtime.errors", "edge_app.runtime.files"}, outside


def test_errors_are_edgecls_errors():
    assert issubclass(CardsError, EdgeclsError)
