"""Loading atomic files: the shipped ml-100k, a user folder, and every malformed-input error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recexp.data import AtomicDataset, load_atomic
from recexp.errors import ConfigError, DataError

INTER = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_ml100k_shipped_with_recbole(ml100k):
    assert (ml100k.n_users, ml100k.n_items, len(ml100k.inter)) == (943, 1682, 100_000)
    assert ml100k.item_text[0] == "Toy Story (1995). Genres: Animation Children's Comedy"
    assert ml100k.user_text[0] == "A 24-year-old M technician"
    assert ml100k.inter["rating"].between(1, 5).all()
    # internal ids are contiguous and map back to the raw tokens of the file
    user, item = ml100k.inter.loc[0, ["user", "item"]].astype(int)
    assert (ml100k.user_tokens[user], ml100k.item_tokens[item]) == ("196", "242")


def test_user_folder_with_items_only_in_item_file(tmp_path):
    write(tmp_path, "toy.inter", INTER + "u1\ti1\t5\t10\nu2\ti2\t3\t20\n")
    write(tmp_path, "toy.item", "item_id:token\ttitle:token_seq\ni1\tFirst\ni2\tSecond\ni3\tNever rated\n")
    data = AtomicDataset(name="toy", path=str(tmp_path), item_template="{title}!").load()
    assert data.n_items == 3 and data.n_users == 2
    assert data.item_text == ["First!", "Second!", "Never rated!"]
    assert data.inter["item"].tolist() == [0, 1]


def test_no_rating_or_time_columns(tmp_path):
    write(tmp_path, "bare.inter", "user_id:token\titem_id:token\na\tx\nb\ty\n")
    data = load_atomic(tmp_path, "bare")
    assert np.isnan(data.inter["rating"]).all() and np.isnan(data.inter["timestamp"]).all()


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "line 1: the file is empty"),
        ("user_id\titem_id:token\n", "line 1: header column 'user_id' is not 'field:type'"),
        ("user_id:int\titem_id:token\n", "line 1: header column 'user_id:int'"),
        (INTER + "u1\ti1\t5\t10\nu2\ti2\t3\n", "line 3: expected 4 tab-separated fields"),
        (INTER + "u1\ti1\t5\t10\nu2\ti2\tfive\t11\n", "line 3: field 'rating' is declared float but holds 'five'"),
    ],
)
def test_malformed_inter_names_file_and_line(tmp_path, text, message):
    path = write(tmp_path, "bad.inter", text)
    with pytest.raises(DataError) as err:
        load_atomic(tmp_path, "bad")
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_folder_and_file_name_the_path(tmp_path):
    with pytest.raises(DataError, match="Dataset folder not found: .*nowhere"):
        load_atomic(tmp_path / "nowhere", "x")
    with pytest.raises(DataError, match=r"Data file not found: .*missing\.inter"):
        load_atomic(tmp_path, "missing")


def test_missing_id_column(tmp_path):
    write(tmp_path, "noitem.inter", "user_id:token\tthing:token\na\tb\n")
    with pytest.raises(DataError, match="no 'item_id' column"):
        load_atomic(tmp_path, "noitem")


def test_template_with_unknown_field_lists_available(tmp_path):
    write(tmp_path, "toy.inter", INTER + "u1\ti1\t5\t10\n")
    write(tmp_path, "toy.item", "item_id:token\ttitle:token_seq\ni1\tFirst\n")
    with pytest.raises(ConfigError, match="names field 'genre'.*Available fields: item_id, title"):
        load_atomic(tmp_path, "toy", item_template="{title} {genre}")
    with pytest.raises(ConfigError, match="no .user file"):
        load_atomic(tmp_path, "toy", user_template="{age}")


# --- which interactions are positives: duplicates, then the rating threshold ---------------------

RATED = INTER + "".join(
    f"{u}\t{i}\t{r}\t{t}\n"
    for u, i, r, t in [
        ("u1", "i1", 8, 10), ("u1", "i1", 2, 30), ("u1", "i2", 9, 20), ("u2", "i1", 1, 5),
        ("u2", "i2", 7, 5), ("u2", "i2", 9, 5), ("u3", "i3", 3, 1),
    ]
)  # BookCrossing-like: 1-10 ratings, (u1, i1) rated twice, (u2, i2) twice at the same time


@pytest.mark.parametrize(
    "duplicates, threshold, kept, dropped",
    [
        ("latest", None, [("u1", "i1", 2), ("u1", "i2", 9), ("u2", "i1", 1), ("u2", "i2", 9), ("u3", "i3", 3)], (2, 0)),
        ("first", None, [("u1", "i1", 8), ("u1", "i2", 9), ("u2", "i1", 1), ("u2", "i2", 7), ("u3", "i3", 3)], (2, 0)),
        ("keep", None, [("u1", "i1", 8), ("u1", "i1", 2), ("u1", "i2", 9), ("u2", "i1", 1), ("u2", "i2", 7),
                        ("u2", "i2", 9), ("u3", "i3", 3)], (0, 0)),
        ("latest", 5, [("u1", "i2", 9), ("u2", "i2", 9)], (2, 3)),
        ("first", 5, [("u1", "i1", 8), ("u1", "i2", 9), ("u2", "i2", 7)], (2, 2)),
        ("keep", 8, [("u1", "i1", 8), ("u1", "i2", 9), ("u2", "i2", 9)], (0, 4)),
    ],
)
def test_duplicates_then_threshold_decide_the_positives(tmp_path, duplicates, threshold, kept, dropped):
    write(tmp_path, "books.inter", RATED)
    data = AtomicDataset(name="books", path=str(tmp_path), positive_threshold=threshold, duplicates=duplicates).load()
    got = list(zip(data.user_tokens[data.inter["user"]], data.item_tokens[data.inter["item"]], data.inter["rating"]))
    assert got == kept  # file order
    info = data.info
    assert (info["duplicates_dropped"], info["below_threshold_dropped"]) == dropped
    assert info["interactions_read"] == 7 and info["interactions"] == len(kept)
    assert info["positives"] == ("every interaction" if threshold is None else f"rating >= {threshold}")


def test_duplicates_are_reported(tmp_path, caplog):
    write(tmp_path, "books.inter", RATED)
    AtomicDataset(name="books", path=str(tmp_path), duplicates="keep").load()
    assert "2 interactions repeat a (user, item) pair; kept them all" in caplog.text


def test_ml100k_default_handling_changes_nothing(ml100k):
    """ml-100k has no repeated pair: the default rules leave its interactions and content hash as read."""
    kept = AtomicDataset(name="ml-100k", duplicates="keep").load()
    assert ml100k.inter.equals(kept.inter) and ml100k.content_hash == kept.content_hash
    assert ml100k.info["duplicates_dropped"] == ml100k.info["below_threshold_dropped"] == 0


def test_ml100k_threshold_keeps_four_and_five_stars(ml100k):
    liked = AtomicDataset(name="ml-100k", positive_threshold=4).load()
    assert len(liked.inter) == 55_375 and liked.info["below_threshold_dropped"] == 44_625
    assert liked.inter["rating"].min() == 4 and liked.content_hash != ml100k.content_hash


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"duplicates": "newest"}, ConfigError, "dataset.duplicates='newest' is unknown; choose one of latest"),
        ({"positive_threshold": "high"}, ConfigError, "must be a number"),
        ({"positive_threshold": 4, "rating_field": None}, ConfigError, "needs ratings"),
        ({"positive_threshold": 11}, DataError, "no interaction is rated >= 11; lower dataset.positive_threshold"),
    ],
)
def test_bad_positive_settings(tmp_path, kwargs, error, message):
    write(tmp_path, "books.inter", RATED)
    with pytest.raises(error, match=message):
        AtomicDataset(name="books", path=str(tmp_path), **kwargs).load()


def test_threshold_refuses_unrated_interactions(tmp_path):
    write(tmp_path, "books.inter", INTER + "u1\ti1\t5\t1\nu2\ti1\t\t2\n")
    with pytest.raises(DataError, match="1 interactions have no numeric 'rating'"):
        AtomicDataset(name="books", path=str(tmp_path), positive_threshold=3).load()


# --- layouts and encodings ---------------------------------------------------------------------


def test_recbole_data_path_layout(tmp_path):
    """dataset.path may be RecBole's data_path, holding NAME/NAME.inter (and NAME/NAME.item)."""
    (tmp_path / "toy").mkdir()
    write(tmp_path / "toy", "toy.inter", INTER + "u1\ti1\t5\t10\n")
    write(tmp_path / "toy", "toy.item", "item_id:token\ttitle:token_seq\ni1\tFirst\n")
    nested = AtomicDataset(name="toy", path=str(tmp_path), item_template="{title}").load()
    flat = AtomicDataset(name="toy", path=str(tmp_path / "toy"), item_template="{title}").load()
    assert nested.item_text == flat.item_text == ["First"] and nested.content_hash == flat.content_hash
    with pytest.raises(DataError, match=r"not found: .*other\.inter \(nor .*other/other\.inter\)"):
        AtomicDataset(name="other", path=str(tmp_path)).load()


def test_byte_order_mark_is_ignored(tmp_path):
    (tmp_path / "bom.inter").write_bytes(("\ufeff" + INTER + "u1\ti1\t5\t10\n").encode("utf-8"))
    assert load_atomic(tmp_path, "bom").inter["rating"].tolist() == [5.0]


def test_non_utf8_file_names_file_and_line(tmp_path):
    write(tmp_path, "latin.inter", INTER + "u1\ti1\t5\t10\n")
    (tmp_path / "latin.item").write_bytes("item_id:token\ttitle:token_seq\ni1\tCaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.item: line 2: byte 0xe9 is not UTF-8; re-save the file as UTF-8"):
        load_atomic(tmp_path, "latin")
