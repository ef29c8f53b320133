"""The captioned_shapes TFDS builder: deterministic rendering, captions that describe the image,
held-out (colour, shape) combinations absent from training images and captions, planted mismatches."""
import numpy as np

from lineage_jax.data import shapes


def test_render_puts_the_named_colour_and_shape_in_the_image():
    sq = shapes.render("blue", "square", "small", 10, 12)
    ci = shapes.render("blue", "circle", "small", 10, 12)
    assert (sq.reshape(-1, 3) == shapes.COLOURS["blue"]).all(axis=1).sum() == 11 * 11   # (2r+1)² pixels
    assert 0 < (ci.any(axis=2)).sum() < 11 * 11 and ci[12, 10].tolist() == list(shapes.COLOURS["blue"])
    big = shapes.render("red", "triangle", "large", 16, 16).any(axis=2).sum()
    assert big > shapes.render("red", "triangle", "small", 16, 16).any(axis=2).sum()


def test_examples_are_deterministic_and_splits_respect_the_held_out_combinations():
    a, b = shapes.example("train", 5), shapes.example("train", 5)
    assert a["caption"] == b["caption"] and np.array_equal(a["image"], b["image"])
    train = [shapes.example("train", i) for i in range(400)]
    held = [shapes.example("heldout", i) for i in range(60)]
    assert all((e["colour"], e["shape"]) not in shapes.HELD_OUT for e in train)
    assert all(tuple(e["caption"].split()[2:]) not in shapes.HELD_OUT for e in train)      # nor in a caption
    assert {(e["colour"], e["shape"]) for e in held} == set(shapes.HELD_OUT)
    assert {e["colour"] for e in train} == set(shapes.COLOURS) and {e["shape"] for e in train} == set(shapes.SHAPES)
    bad = [e for e in train if e["mismatched"]]
    assert 0.05 < len(bad) / len(train) < 0.15
    assert all(e["caption"] != shapes.caption(e["size"], e["colour"], e["shape"]) for e in bad)
    assert all(e["caption"] == shapes.caption(e["size"], e["colour"], e["shape"]) for e in train if not e["mismatched"])


def test_builder_serves_the_rendered_examples(tmp_path):
    data = shapes.load_shapes(tmp_path, config="tiny")
    assert {k: len(v["caption"]) for k, v in data.items()} == {"train": 300, "test": 40, "heldout": 60}
    e = shapes.example("heldout", 7)
    np.testing.assert_array_equal(data["heldout"]["image"][7], e["image"])
    assert data["heldout"]["caption"][7] == e["caption"]
    assert data["train"]["mismatched"].sum() == sum(shapes.example("train", i)["mismatched"] for i in range(300))
