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
