"""The Amazon Reviews 2023 reader on a tiny copy of the benchmark files, and its download path against a local
HTTP server that stands in for Hugging Face (redirect carrying ``X-Linked-Etag``, ranges, failures)."""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import CONF
from hydra import compose, initialize_config_dir

from recexp.config import build
from recexp.data import Amazon2023Dataset
from recexp.data.amazon2023 import render
from recexp.errors import ConfigError, DataError

FIXTURE = Path(__file__).parent / "data" / "amazon2023"
PARTS = ("train", "valid", "test")
REMOTE = {  # path in the dataset repository -> fixture file
    **{f"benchmark/5core/last_out/All_Beauty.{p}.csv": f"All_Beauty.{p}.csv" for p in PARTS},
    "raw/meta_categories/meta_All_Beauty.jsonl": "meta_All_Beauty.jsonl",
}
TRAIN = "benchmark/5core/last_out/All_Beauty.train.csv"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(part: str) -> list[dict]:
    with open(FIXTURE / f"All_Beauty.{part}.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def meta_asins() -> list[str]:
    return [json.loads(line)["parent_asin"] for line in (FIXTURE / "meta_All_Beauty.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def beauty():
    return Amazon2023Dataset(category="All_Beauty", path=str(FIXTURE)).load()


# --- reading the files


def test_counts_ids_and_values_follow_the_files(beauty):
    raw = [r for part in PARTS for r in rows(part)]
    assert (beauty.n_users, beauty.n_items, len(beauty.inter)) == (12, 20, 121)
    assert [beauty.info[p] for p in PARTS] == [97, 12, 12] and beauty.info["items_without_meta"] == 2
    assert list(beauty.user_tokens) == list(dict.fromkeys(r["user_id"] for r in raw))  # by first appearance
    reviewed = set(r["parent_asin"] for r in raw)
    in_meta = [a for a in meta_asins() if a in reviewed]  # metadata order, the 2 unreviewed items left out
    only_reviewed = [a for a in dict.fromkeys(r["parent_asin"] for r in raw) if a not in in_meta]
    assert list(beauty.item_tokens) == in_meta + only_reviewed and len(only_reviewed) == 2
    inter = beauty.inter
    assert list(beauty.user_tokens[inter["user"]]) == [r["user_id"] for r in raw]  # row i is line i: train, valid, test
    assert list(beauty.item_tokens[inter["item"]]) == [r["parent_asin"] for r in raw]
    assert inter["rating"].tolist() == [float(r["rating"]) for r in raw]
    assert np.array_equal(inter["timestamp"].to_numpy(), np.array([int(r["timestamp"]) for r in raw]) / 1000)
    assert beauty.info["files"]["All_Beauty.train.csv"]["sha256"] == sha((FIXTURE / "All_Beauty.train.csv").read_bytes())


def test_each_users_sequence_ends_with_valid_then_test(beauty):
    n_train, n_valid = beauty.info["train"], beauty.info["valid"]
    ordered = beauty.inter.sort_values(["user", "timestamp"], kind="stable")
    ties = 0
    for _, history in ordered.groupby("user", sort=False):
        rows_ = history.index.to_numpy()
        assert n_train + n_valid <= rows_[-1]  # the last is the user's test row
        assert n_train <= rows_[-2] < n_train + n_valid  # the second-to-last its valid row
        assert (rows_[:-2] < n_train).all()
        assert history["timestamp"].is_monotonic_increasing
        ties += history["timestamp"].iloc[-2] == history["timestamp"].iloc[-3]
    assert ties == 1  # the fixture's tie: valid and the last training review in the same millisecond


def test_item_texts_render_list_fields_and_drop_empty_ones(beauty):
    text = dict(zip(beauty.item_tokens, beauty.item_text))
    title = dict(zip(beauty.item_tokens, beauty.item_title))
    serum = beauty.item_tokens[list(beauty.item_title).index("Vitamin C Face Serum")]
    assert text[serum] == ("Vitamin C Face Serum. Vitamin formula Cruelty-free and vegan. "
                           "Beauty & Personal Care Skin Care Face Serums. GlowLab")
    brush = beauty.item_tokens[list(beauty.item_title).index("Bamboo Hair Brush")]  # no features, categories, store
    assert text[brush] == "Bamboo Hair Brush"
    for asin in beauty.item_tokens[-2:]:  # no metadata line
        assert (text[asin], title[asin]) == ("", "")
    features = beauty.item_features.set_index("parent_asin")
    assert features.loc[serum, "description"] == "" and features.loc[serum, "store"] == "GlowLab"
    assert list(features.index) == list(beauty.item_tokens)


def test_render_keeps_words_of_fields_that_are_there():
    template = "Item: {title} by {store}, {features}."
    items = [{"title": "Comb", "store": "", "features": "wide"}, {"title": "", "store": "", "features": ""},
             {"title": "", "store": "Acme", "features": ""}]
    assert render(template, items) == ["Item: Comb, wide.", "", "Acme."]
    bracketed = "{title} ({store}): {features}"
    assert render(bracketed, items) == ["Comb: wide", "", "(Acme)"]
    assert render("{title!r:>8}", [{"title": "Comb"}]) == ["'Comb'"]


def test_custom_template_and_extra_columns(tmp_path):
    for name in REMOTE.values():
        shutil.copy(FIXTURE / name, tmp_path / name)
    with_history = tmp_path / "All_Beauty.test.csv"  # the last_out_w_his variant: a history column at the end
    lines = with_history.read_text().splitlines()
    with_history.write_text("\n".join([lines[0] + ",history"] + [line + ",B000000001 B000000002" for line in lines[1:]]) + "\n")
    plain = Amazon2023Dataset(path=str(FIXTURE)).load()
    data = Amazon2023Dataset(path=str(tmp_path), item_template="{title} ({main_category}): {description}").load()
    assert data.inter.equals(plain.inter) and list(data.item_tokens) == list(plain.item_tokens)
    assert data.content_hash != plain.content_hash  # a different file
    assert "Silk Sleep Mask (All Beauty): Our silk sleep mask is made in small batches." in data.item_text
    assert "Vitamin C Face Serum (All Beauty)" in data.item_text  # no description: its separator goes, the bracket stays


# --- bad input


def write_fixture(folder: Path, **replace: str) -> Path:
    for name in REMOTE.values():
        (folder / name).write_text(replace.get(name, (FIXTURE / name).read_text()))
    return folder


@pytest.mark.parametrize("settings, message", [
    ({"category": "Beauty"}, "dataset.category='Beauty' is not an Amazon Reviews 2023 category; choose one of All_Beauty"),
    ({"category": "Amazon_Fashion"}, "has no 5-core benchmark files; set dataset.kcore=0"),
    ({"kcore": 10}, "dataset.kcore=10 is not allowed"),
    ({"item_template": "{title} {brand}"}, "dataset.item_template names field 'brand'; the Amazon metadata fields are"),
    ({"checksums": {"train.csv": "0" * 64}}, "dataset.checksums names 'train.csv', which is not one of"),
    ({"checksums": {"All_Beauty.train.csv": "abc"}}, "is not a sha256 (64 hex digits)"),
])
def test_bad_settings_are_refused_before_reading(settings, message):
    with pytest.raises(ConfigError) as err:
        Amazon2023Dataset(**{"path": "/nonexistent", **settings}).load()
    assert message in str(err.value) and "\n" not in str(err.value)


HEADER = "user_id,parent_asin,rating,timestamp\n"


@pytest.mark.parametrize("name, text, message", [
    ("All_Beauty.valid.csv", "user_id,asin,rating,timestamp\nU1,B1,5.0,1\n",
     "All_Beauty.valid.csv: no 'parent_asin' column; the header is user_id,asin,rating,timestamp"),
    ("All_Beauty.test.csv", "user_id,parent_asin,rating\nU1,B1,5.0\n", "All_Beauty.test.csv: no 'timestamp' column"),
    ("All_Beauty.train.csv", HEADER + "U1,B1,five,1\n", "All_Beauty.train.csv: line 2: rating 'five' is not a number"),
    ("All_Beauty.train.csv", "", "All_Beauty.train.csv: not a readable CSV"),
    ("meta_All_Beauty.jsonl", '{"title": "x", "parent_asin": "B1"}\n{"title": \n', "meta_All_Beauty.jsonl: line 2: not valid JSON"),
    ("meta_All_Beauty.jsonl", '{"title": "no id"}\n', "meta_All_Beauty.jsonl: line 1: no 'parent_asin' field"),
])
def test_malformed_files_name_file_and_problem(tmp_path, name, text, message):
    folder = write_fixture(tmp_path, **{name: text})
    with pytest.raises(DataError) as err:
        Amazon2023Dataset(path=str(folder)).load()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_missing_file_and_pinned_checksum_in_a_folder(tmp_path):
    folder = write_fixture(tmp_path)
    pinned = {"meta_All_Beauty.jsonl": sha((FIXTURE / "meta_All_Beauty.jsonl").read_bytes()).upper()}
    assert Amazon2023Dataset(path=str(folder), checksums=pinned).load().n_items == 20
    with pytest.raises(DataError, match="does not match dataset.checksums"):
        Amazon2023Dataset(path=str(folder), checksums={"All_Beauty.test.csv": "0" * 64}).load()
    (folder / "All_Beauty.valid.csv").unlink()
    with pytest.raises(DataError, match=r"All_Beauty.valid.csv: file not found; set dataset.path"):
        Amazon2023Dataset(path=str(folder)).load()


def test_config_composes_and_builds(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["dataset=amazon2023", f"cache_dir={tmp_path}", "progress=false",
                                           "dataset.category=Video_Games", "+dataset.checksums.meta_Video_Games.jsonl=" + "a" * 64])
    dataset = build(cfg.dataset)
    assert isinstance(dataset, Amazon2023Dataset) and dataset.cache_dir == f"{tmp_path}/downloads"
    assert (dataset.category, dataset.kcore, dataset.path, dataset.progress) == ("Video_Games", 5, None, False)
    assert dataset.base_url == "https://huggingface.co/datasets/McAuley-Lab/Amazon-Reviews-2023/resolve/main"
    assert isinstance(dataset.checksums, dict)  # nested at its dots by the override; joined again when read


# --- downloading, against a local server


class Hub(BaseHTTPRequestHandler):
    """``/resolve/PATH`` redirects to ``/cdn/PATH`` with ``X-Linked-Etag`` (as the Hub does for LFS files);
    ``/cdn/PATH`` serves the bytes, honouring ``Range: bytes=N-`` when the server allows ranges."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        kind, _, path = self.path.lstrip("/").partition("/")
        if path not in server.files:
            self.send_error(404)
        elif kind == "resolve":
            self.send_response(302)
            self.send_header("Location", f"/cdn/{path}")
            self.send_header("X-Linked-Etag", f'"{server.etags.get(path, sha(server.files[path]))}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(server.files[path], path in server.cut)

    def _send(self, data: bytes, cut: bool):
        wanted = self.headers.get("Range")
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and self.server.ranges else 0
        start = max(0, start - self.server.shift)  # a server answering a range with other bytes than asked
        self.send_response(206 if wanted and self.server.ranges else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:len(data) // 2] if cut else data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    server.files = {path: (FIXTURE / name).read_bytes() for path, name in REMOTE.items()}
    server.requests, server.etags, server.cut, server.ranges, server.shift = [], {}, set(), True, 0
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_port}/resolve"
    yield server
    server.shutdown()
    server.server_close()


def from_hub(hub_or_url, cache: Path, **settings):
    url = hub_or_url if isinstance(hub_or_url, str) else hub_or_url.url
    return Amazon2023Dataset(category="All_Beauty", cache_dir=str(cache), base_url=url, progress=False, **settings).load()


def cached(cache: Path, path: str = TRAIN) -> Path:
    return cache / "amazon2023" / path


def test_first_load_downloads_and_the_second_reads_the_cache(hub, tmp_path, beauty):
    data = from_hub(hub, tmp_path)
    assert sorted(p for p, _ in hub.requests) == sorted([f"/resolve/{p}" for p in REMOTE] + [f"/cdn/{p}" for p in REMOTE])
    for path, name in REMOTE.items():
        assert cached(tmp_path, path).read_bytes() == (FIXTURE / name).read_bytes()
        assert cached(tmp_path, path).with_name(f"{Path(path).name}.sha256").read_text().strip() == sha(hub.files[path])
    assert not list(tmp_path.rglob("*.part"))
    assert data.content_hash == beauty.content_hash and data.inter.equals(beauty.inter)
    assert data.item_text == beauty.item_text
    hub.requests.clear()
    again = from_hub(hub, tmp_path)
    assert hub.requests == [] and again.content_hash == data.content_hash


def test_a_half_written_part_is_resumed_with_a_range_request(hub, tmp_path):
    whole = hub.files[TRAIN]
    part = cached(tmp_path).with_name("All_Beauty.train.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(whole[:1000])
    from_hub(hub, tmp_path)
    assert (f"/cdn/{TRAIN}", "bytes=1000-") in hub.requests
    assert cached(tmp_path).read_bytes() == whole and not part.exists()


def test_a_server_without_ranges_sends_the_whole_file_again(hub, tmp_path):
    hub.ranges = False
    part = cached(tmp_path).with_name("All_Beauty.train.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(hub.files[TRAIN][:1000])
    from_hub(hub, tmp_path)
    assert cached(tmp_path).read_bytes() == hub.files[TRAIN]


def test_a_range_answered_with_other_bytes_starts_afresh(hub, tmp_path):
    hub.shift = 10
    part = cached(tmp_path).with_name("All_Beauty.train.csv.part")
    part.parent.mkdir(parents=True)
    part.write_bytes(hub.files[TRAIN][:1000])
    hub.etags[TRAIN] = "not-a-sha256"  # nothing vouches for the bytes: only the range check stands between
    from_hub(hub, tmp_path)
    assert cached(tmp_path).read_bytes() == hub.files[TRAIN]


def test_a_file_placed_by_hand_is_used_and_recorded(hub, tmp_path, caplog):
    for path, name in REMOTE.items():
        cached(tmp_path, path).parent.mkdir(parents=True, exist_ok=True)
        cached(tmp_path, path).write_bytes((FIXTURE / name).read_bytes())
    from_hub(hub, tmp_path)
    assert hub.requests == [] and "has no recorded sha256 (placed by hand?)" in caplog.text
    assert cached(tmp_path).with_name("All_Beauty.train.csv.sha256").read_text().strip() == sha(hub.files[TRAIN])


def test_a_broken_transfer_keeps_its_part_and_the_next_load_resumes_it(hub, tmp_path):
    hub.cut.add(TRAIN)
    with pytest.raises(DataError, match=r"broke off at \d+ of \d+ bytes; run again to resume it"):
        from_hub(hub, tmp_path)
    part = cached(tmp_path).with_name("All_Beauty.train.csv.part")
    half = len(hub.files[TRAIN]) // 2
    assert part.stat().st_size == half and not cached(tmp_path).exists()
    hub.cut.clear()
    from_hub(hub, tmp_path)
    assert (f"/cdn/{TRAIN}", f"bytes={half}-") in hub.requests
    assert cached(tmp_path).read_bytes() == hub.files[TRAIN]


def test_a_pinned_checksum_that_does_not_match_leaves_no_file(hub, tmp_path):
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        from_hub(hub, tmp_path, checksums={"All_Beauty.train.csv": wrong})
    message = str(err.value)
    assert f"All_Beauty.train.csv downloaded from {hub.url}/{TRAIN} has sha256 {sha(hub.files[TRAIN])}" in message
    assert f"dataset.checksums expects {wrong}" in message and "\n" not in message
    assert not cached(tmp_path).exists() and not cached(tmp_path).with_name("All_Beauty.train.csv.part").exists()


def test_the_servers_linked_etag_is_checked(hub, tmp_path):
    hub.etags["raw/meta_categories/meta_All_Beauty.jsonl"] = "f" * 64
    with pytest.raises(DataError, match=f"meta_All_Beauty.jsonl .* but the server expects {'f' * 64}"):
        from_hub(hub, tmp_path)
    meta = cached(tmp_path, "raw/meta_categories/meta_All_Beauty.jsonl")
    assert not meta.exists() and not meta.with_name(f"{meta.name}.part").exists()


def test_a_server_that_is_down_names_the_url_and_the_manual_step(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/resolve"
    with pytest.raises(DataError) as err:
        from_hub(url, tmp_path)
    message = str(err.value)
    assert message.startswith(f"Cannot download {url}/{TRAIN} (")
    assert f"download {url}/{TRAIN} into {cached(tmp_path).parent} by hand, or set dataset.path" in message


def test_a_missing_file_on_the_server_is_an_http_error(hub, tmp_path):
    del hub.files["raw/meta_categories/meta_All_Beauty.jsonl"]
    with pytest.raises(DataError, match=r"Cannot download .*/meta_All_Beauty.jsonl: HTTP 404"):
        from_hub(hub, tmp_path)


def test_a_damaged_cached_file_is_reported_and_fetched_again(hub, tmp_path, caplog):
    from_hub(hub, tmp_path)
    target = cached(tmp_path)
    target.write_bytes(target.read_bytes()[:-20])  # truncated on disk
    hub.requests.clear()
    with caplog.at_level(logging.WARNING, logger="recexp.data.download"):
        data = from_hub(hub, tmp_path)
    assert f"The cached {target} cannot be trusted" in caplog.text
    assert [p for p, _ in hub.requests] == [f"/resolve/{TRAIN}", f"/cdn/{TRAIN}"]  # only the damaged file
    assert target.read_bytes() == hub.files[TRAIN] and len(data.inter) == 121
