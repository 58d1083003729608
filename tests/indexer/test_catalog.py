from __future__ import annotations

import json

import pytest

from vitrine.indexer.catalog import CatalogError, Item, parse_column_map, read_catalog


def write(tmp_path, lines, name="c.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


def test_reads_text_only_image_only_and_both(tmp_path):
    p = write(tmp_path, [
        json.dumps({"id": "a", "title": "Red shirt", "attributes": {"color": "Red", "size": 42}, "price": 10}),
        json.dumps({"id": "b", "image": "images/b.jpg"}),
        json.dumps({"id": 7, "title": "T", "description": "D", "category": "X > Y", "image": "http://x/y.jpg"}),
    ])
    items, errors = read_catalog(p)
    assert errors == []
    assert [i.id for i in items] == ["a", "b", "7"]
    assert items[0].attributes == {"color": "Red", "size": "42"} and items[0].price == 10.0
    assert items[1].image == "images/b.jpg" and not items[1].has_text()


def test_every_bad_line_is_reported_with_its_number(tmp_path):
    p = write(tmp_path, [
        json.dumps({"id": "a"}),
        "{not json",
        json.dumps({"title": "no id"}),
        json.dumps({"id": "a", "title": "dup"}),
        json.dumps({"id": "c", "price": "cheap"}),
        json.dumps({"id": "d", "attributes": ["x"]}),
        json.dumps(["not", "an", "object"]),
    ])
    with pytest.raises(CatalogError) as err:
        read_catalog(p)
    lines = {e.line: e.message for e in err.value.errors}
    assert set(lines) == {2, 3, 4, 5, 6, 7}
    assert "invalid JSON" in lines[2]
    assert "missing required field 'id'" in lines[3]
    assert "duplicate id 'a'" in lines[4] and "line 1" in lines[4]
    assert "'price'" in lines[5]
    assert "'attributes'" in lines[6]
    assert "line 2:" in str(err.value)


def test_skip_invalid_keeps_good_lines_and_returns_errors(tmp_path):
    p = write(tmp_path, [json.dumps({"id": "a"}), "oops", json.dumps({"id": "b"})])
    items, errors = read_catalog(p, skip_invalid=True)
    assert [i.id for i in items] == ["a", "b"]
    assert [e.line for e in errors] == [2]


def test_csv_with_column_map_and_extra_columns_as_attributes(tmp_path):
    p = tmp_path / "export.csv"
    p.write_text("sku,name,colour,cost,brand\nS1,Red Shirt,Red,9.5,Acme\nS2,Blue Bag,Blue,,Acme\n,No Id,Red,1,\nS4,Bad Price,Red,abc,\n")
    mapping = parse_column_map("id=sku,title=name,attributes.color=colour,price=cost")
    items, errors = read_catalog(p, column_map=mapping, skip_invalid=True)
    assert [i.id for i in items] == ["S1", "S2"]
    assert items[0] == Item(id="S1", title="Red Shirt", attributes={"color": "Red", "brand": "Acme"}, price=9.5)
    assert items[1].price is None
    assert [e.line for e in errors] == [4, 5]


def test_column_map_rejects_unknown_fields():
    with pytest.raises(ValueError, match="unknown catalog field 'colour'"):
        parse_column_map("colour=c")


def test_missing_catalog_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_catalog(tmp_path / "nope.jsonl")


def test_an_empty_attribute_value_is_no_value_so_batch_and_live_items_agree():
    from vitrine.indexer.catalog import item_from_dict

    item = item_from_dict({"id": "1", "title": "t", "attributes": {"color": "", "usage": "  ", "gender": "Men"}})
    assert dict(item.attributes) == {"gender": "Men"}  # the server refuses an empty value in a whole item
