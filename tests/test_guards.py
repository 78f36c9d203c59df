from evaluators.guards import classify_ops, describe_forbidden


def test_honest_entry_point_ops_pass():
    assert describe_forbidden(["empty", "zeros", "sum", "_to_copy", "t", "view", "add_"]) == ""


def test_products_are_named_first():
    products, others = classify_ops(["empty", "mul", "mm", "bmm", "mm", "_scaled_mm", "convolution"])
    assert products == ["mm", "bmm", "_scaled_mm", "convolution"]
    assert others == ["mul"]
    text = describe_forbidden(["empty", "mm"])
    assert "aten.mm" in text and "matrix product" in text


def test_arithmetic_outside_triton_is_refused():
    # a broadcasting product: (a[:, :, None] * b[None]).sum(1)
    text = describe_forbidden(["unsqueeze", "mul", "sum"])
    assert "aten.mul" in text and "only allocate, view, cast, copy" in text


def test_torch_inside_a_launch_is_refused():
    # the interpreter's own argument handling is fine ...
    assert describe_forbidden(["empty"], ["set_", "empty", "new_empty", "copy_"]) == ""
    # ... torch called from a kernel body (plain Python under the interpreter) is not
    text = describe_forbidden(["empty"], ["set_", "mm"])
    assert "aten.mm" in text and "inside a Triton launch" in text
