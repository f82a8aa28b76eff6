"""Pictures credited by the package's own READMEs (GCompris): licences read per file, copyleft and
uncredited pictures skipped, pictures unpacked from Qt resource bundles."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from indexing import corpora
from indexing.cache import manifest_dir
from indexing.corpora import Corpus, fetch_corpus, find_corpus, parse_credited_files
from indexing.credits import normalise_licence, read_credits

QT_DATA = Path(__file__).parent / "data" / "qt"

README = """\
Copyright: Stefano Guerrieri
Source: https://commons.wikimedia.org/wiki/File:Anthias_anthias_Stefano_Guerrieri1.jpg
License: Public Domain
Files:
fish14.webp

Copyright: Someone
License: CC-BY-SA-4.0 Comments: cropping, sharpening
Files: fish2.webp
       fish3.webp

Copyright: GCompris team
License: GPLv3
Files:
fish4.webp

Copyright: nobody said
Files:
fish5.webp
"""


def _corpus(params: dict) -> Corpus:
    return Corpus("photos", "test", "debian", "pkg", "1.0", "mixed", "0" * 64, "credited-qt-resources", params=params)


def _picture(path: Path, rgb: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 12), rgb).save(path, format="WEBP")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CC-BY-SA 4.0", "CC-BY-SA-4.0"),
        ("CC-BY-SA-4.0 Comments: cropping, sharpening", "CC-BY-SA-4.0"),
        ("cc0-1.0", "CC0-1.0"),
        ("Public domain", "public-domain"),
        ("Public Domain Comment: original source at https://example.org/x.jpg", "public-domain"),
        ("GPLv3", "GPLv3"),
    ],
)
def test_licence_spellings_compare_equal(name, expected):
    assert normalise_licence(name) == expected


def test_readme_blocks_credit_each_listed_file(tmp_path):
    (tmp_path / "README").write_text(README, encoding="utf-8")
    credits = read_credits(tmp_path / "README")
    assert credits["fish14.webp"].licence == "public-domain"
    assert credits["fish14.webp"].text.startswith("Stefano Guerrieri; https://commons.wikimedia.org/")
    assert credits["fish2.webp"].licence == credits["fish3.webp"].licence == "CC-BY-SA-4.0"  # two files, one block
    assert credits["fish4.webp"].licence == "GPLv3"
    assert "fish5.webp" not in credits  # a block without a licence credits nothing


def test_parser_keeps_permissive_pictures_and_says_why_it_skipped_the_rest(tmp_path):
    top = tmp_path / "res"
    for i, name in enumerate(["fish14", "fish2", "fish4", "fish5", "fish6"]):
        _picture(top / "fishes" / f"{name}.webp", (10 * i, 80, 120))
    _picture(top / "places/france/eiffel.webp", (90, 90, 90))
    (top / "fishes/README").write_text(README, encoding="utf-8")
    # a README one folder up lists its pictures by their path below it
    (top / "places/README").write_text(
        "Copyright: Tognopop\nLicense: CC0-1.0\nFiles:\nfrance/eiffel.webp\n", encoding="utf-8"
    )
    params = {
        "image_dir": "res",
        "key_prefix": "gc:",
        "kind": "photo",
        "allowed_licences": ["Public Domain", "CC-BY-SA 4.0", "CC0-1.0"],
        "images": [
            {"file": "fishes/fish14.webp", "caption": "a red  anthias", "names": ["anthias"]},
            {"file": "fishes/fish2.webp", "caption": "a sand smelt"},
            {"file": "fishes/fish4.webp", "caption": "a perch"},  # GPL: not allowed
            {"file": "fishes/fish5.webp", "caption": "a bowfin"},  # no licence in its block
            {"file": "fishes/fish6.webp", "caption": "a discus"},  # not in any README
            {"file": "fishes/fish9.webp", "caption": "a clownfish"},  # no such picture
            {"file": "places/france/eiffel.webp", "caption": "the Eiffel Tower", "key": "eiffelTower"},
        ],
    }
    parsed = parse_credited_files(tmp_path, _corpus(params))
    rows = parsed.table.to_pylist()
    assert [(r["key"], r["caption"], r["licence"]) for r in rows] == [
        ("gc:fish14", "a red anthias", "public-domain"),
        ("gc:fish2", "a sand smelt", "CC-BY-SA-4.0"),
        ("gc:eiffelTower", "the Eiffel Tower", "CC0-1.0"),
    ]
    assert rows[0]["names"] == "a red anthias | anthias" and rows[0]["kind"] == "photo"
    assert rows[2]["credit"] == "Tognopop"
    assert parsed.skipped_by_reason == {"licence_not_allowed": 1, "no_licence": 2, "no_image": 1}


def test_fetch_unpacks_pictures_from_a_qt_bundle_before_parsing(tmp_path):
    bundle = tmp_path / "pkg/usr/share/app/rcc/pics.rcc"
    bundle.parent.mkdir(parents=True)
    shutil.copy(QT_DATA / "v2.rcc", bundle)
    root = tmp_path / "pkg"
    corpus = _corpus(
        {
            "bundles": ["usr/share/app/rcc/pics.rcc"],
            "resource_prefixes": ["demo/pics/"],
            "unpack_dir": "resources",
            "image_dir": "resources/demo/pics",
            "allowed_licences": ["CC0-1.0"],
            "images": [
                {"file": "animals/red_fox.png", "caption": "a red fox"},
                {"file": "blue.png", "caption": "blue"},
            ],
        }
    )
    corpora.UNPACKERS["credited-qt-resources"](root, corpus)
    assert not (root / "resources/demo/notes.qml").exists()  # outside the prefixes
    (root / "resources/demo/pics/README").write_text("License: CC0-1.0\nFiles: animals/red_fox.png\n", encoding="utf-8")
    parsed = parse_credited_files(root, corpus)
    assert parsed.table.column("caption").to_pylist() == ["a red fox"]
    assert parsed.skipped_by_reason == {"no_licence": 1}
    with Image.open(parsed.table.column("image")[0].as_py()) as im:
        assert im.size == (8, 6)


def test_gcompris_spec_captions_every_picture_once_and_allows_no_copyleft():
    spec = find_corpus("gcompris-photos", manifest_dir())
    images = spec.params["images"]
    files = [i["file"] for i in images]
    assert len(files) == len(set(files)) == 261
    assert all(len(i["caption"].split()) >= 2 for i in images)
    assert not any("GPL" in name for name in spec.params["allowed_licences"])
    assert spec.params["val_fraction"] == 0.5  # evaluation only: every item is 'val' or 'test'


def test_an_evaluation_only_corpus_splits_by_key_into_val_and_test(tmp_path):
    top = tmp_path / "res"
    names = [f"tower{i}" for i in range(40)]
    for name in names:
        _picture(top / f"{name}.webp", (30, 60, 90))
    (top / "README").write_text("License: CC0-1.0\nFiles:\n" + "\n".join(f"{n}.webp" for n in names), encoding="utf-8")
    images = [{"file": f"{n}.webp", "caption": f"a tower number {i}"} for i, n in enumerate(names)]
    images[1]["key"] = "tower0"  # two pictures of one tower: one key, so one split
    params = {"image_dir": "res", "allowed_licences": ["CC0-1.0"], "val_fraction": 0.5, "images": images}
    rows = parse_credited_files(tmp_path, _corpus(params)).table.to_pylist()
    assert {r["split"] for r in rows} == {"val", "test"}
    assert rows[0]["key"] == rows[1]["key"] and rows[0]["split"] == rows[1]["split"]


@pytest.mark.slow
def test_fetch_real_gcompris_photos_from_debian(tmp_path):
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        pytest.skip("needs apt-get and dpkg-deb (Debian or Ubuntu)")
    try:
        result = fetch_corpus("gcompris-photos", cache_dir=tmp_path, manifest_dir=manifest_dir(), progress=False)
        assert (result.n_items, result.n_skipped) == (261, 0)
        table = pq.read_table(result.manifest_path).to_pylist()
        assert [r["split"] for r in table].count("val") == 113  # the rest, 148, are 'test'
        rows = {Path(r["image"]).name: r for r in table}  # eiffelTower.webp etc. are in two folders: one kept
        # GCompris' README, not Debian's stale copyright file (which calls fish14 a hammerhead shark)
        assert rows["fish14.webp"]["credit"].startswith("Stefano Guerrieri; ")
        assert rows["fish14.webp"]["licence"] == "public-domain"
        assert {r["licence"] for r in rows.values()} <= {
            "public-domain",
            "CC0-1.0",
            "CC-BY-2.0",
            "CC-BY-3.0",
            "CC-BY-SA-4.0",
        }
        assert json.loads(pq.read_schema(result.manifest_path).metadata[b"retr.skipped_by_reason"]) == {}
        with Image.open(rows["fish9.webp"]["image"]) as im:
            assert im.format == "WEBP" and min(im.size) >= 100
    finally:
        shutil.rmtree(tmp_path / "corpora", ignore_errors=True)
