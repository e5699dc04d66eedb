"""``train --field`` on a folder ``edgecls fleet pull`` wrote: which devices' photos went in, from its manifest."""

from __future__ import annotations

import json

import cv2
import numpy as np

from trainer.field import read_field


def test_a_pulled_field_folder_records_how_many_photos_each_device_sent(tmp_path):
    field, lines = tmp_path / "pulled", []
    for cls, devices in (("discs", ["kiosk-1"] * 4 + ["kiosk-2"]), ("stripes", ["kiosk-2"] * 5)):
        (field / cls).mkdir(parents=True)
        for i, device in enumerate(devices):
            sha = f"{cls[:2]}{i:02d}".ljust(64, "0")
            cv2.imwrite(str(field / cls / f"{sha[:16]}.jpg"), np.full((16, 16, 3), 40 * i, np.uint8))
            lines.append({"sha256": sha, "path": f"{cls}/{sha[:16]}.jpg", "label": cls, "device": device})
    # A second device that sent the same photo counts for both; a conflict (no path) and a torn line count for none.
    lines += [{**lines[0], "device": "kiosk-3", "duplicate": True}, {**lines[1], "path": None, "device": "kiosk-4"}]
    (field / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"sha256": "ab')
    (field / ".pull-state.json").write_text("{}")

    photos = read_field(field, (), 0.3, ["discs", "stripes", "squares"], lab_train=100, seed=1)
    record = photos.record(["discs", "stripes", "squares"])
    assert record["devices"] == {"kiosk-1": 4, "kiosk-2": 6, "kiosk-3": 1}
    assert sum(len(v) for v in record["splits"].values()) == 10  # the manifest and the state are no photos

    (field / "manifest.jsonl").unlink()
    assert "devices" not in read_field(field, (), 0.3, ["discs", "stripes"], 100, 1).record(["discs", "stripes"])
