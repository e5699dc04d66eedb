"""Review by the group, over the kiosk's HTTP API with a real run: near-identical frames are one group, a group
is labelled in one request and sent back in one, and the status says which labelled frames a verdict looks like
and carries its class card in the asked language (the same flows in a browser: test_farmer_view.py)."""

from __future__ import annotations

from support import IMAGENET_MODEL, run_cli, running_kiosk, write_video

CARDS = """macaw:
  en: {name: Scarlet macaw, description: A large red parrot., advice: Keep your distance and enjoy it.}
  sw: {name: Kasuku mwekundu, advice: Kaa mbali na ufurahie.}
"""


def kiosk_model(tmp_path):
    """Coral's ImageNet model with a card for "macaw", set with ``edgecls meta`` as a kiosk owner would."""
    import shutil

    model = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    (tmp_path / "classes.yaml").write_text(CARDS)
    proc = run_cli("meta", model, "--classes", tmp_path / "classes.yaml")
    assert proc.returncode == 0, proc.stderr
    return model


def two_scenes(tmp_path):
    """A looping video: the parrot for 80 frames, then Grace Hopper for 20: two groups of near-identical frames."""
    return write_video(tmp_path / "two.avi", [("parrot.jpg", 80), ("grace_hopper.bmp", 20)], size=(320, 240))


# 60 frames kept, one every 0.05 s over the looping video (then collection pauses: the list stands still): about
# 48 of the parrot and 12 of Grace Hopper, whatever the machine's speed.
COLLECT = {"collected": 60, "collect_every": 0.05, "collect_max": 60}


def test_a_group_is_one_decision_and_one_undo(tmp_path):
    kiosk_model(tmp_path)
    with running_kiosk(tmp_path, two_scenes(tmp_path), **COLLECT) as client:
        items = client.call("/api/collected")[1]["items"]
        groups = {}
        for item in items:
            groups.setdefault(item["group"], []).append(item)
        big = max(groups.values(), key=len)
        assert len(big) >= 30 and len(groups) <= 4, {g: len(m) for g, m in groups.items()}  # a few scenes, not 45
        assert all("signature" not in item for item in items)  # the page gets groups, not vectors
        ids = [item["id"] for item in big]
        # the other scene's frames are another group: Grace Hopper is not the parrot
        assert {item["top"][0][0] for item in big} != {item["top"][0][0] for g, m in groups.items() if m is not big
                                                        for item in m} or len(groups) == 1

        code, done = client.call("/api/label", {"ids": ids + ["20990101-000000-000-f1"], "label": "macaw"})
        assert code == 200 and done["ids"] == ids and done["missing"] == ["20990101-000000-000-f1"]
        labelled = tmp_path / "field" / "labelled" / "macaw"
        assert sorted(p.stem for p in labelled.glob("*.jpg")) == sorted(ids)
        assert client.call("/api/label", {"ids": ids, "label": "macaw"})[0] == 404  # none waits any more

        # "looks like these": the verdict is macaw, and labelled macaw frames exist
        status = client.until("/status?lang=sw", lambda s: s.get("examples") and s["label"] == "macaw")
        assert {e["label"] for e in status["examples"]} == {"macaw"} and len(status["examples"]) == 3
        assert {e["id"] for e in status["examples"]} <= set(ids)
        # a card is one language's: no English description slipped into the Swahili one
        assert status["card"] == {"name": "Kasuku mwekundu", "description": "", "advice": "Kaa mbali na ufurahie.",
                                  "lang": "sw"}
        assert client.call("/status?lang=fr")[1]["card"]["name"] == "Scarlet macaw"  # no French card: English

        code, back = client.call("/api/unlabel", {"ids": ids})
        assert code == 200 and sorted(back["ids"]) == sorted(ids)
        assert not labelled.exists() and all((tmp_path / "field" / "inbox" / f"{i}.jpg").is_file() for i in ids)

        for bad in ({"ids": []}, {"ids": "x"}, {"ids": ["../x"]}, {"ids": [str(i) for i in range(201)]}):
            assert client.call("/api/label", {**bad, "label": "macaw"})[0] == 400, bad
        assert client.call("/api/label", {"ids": ids}, token=None)[0] == 401
