"""Reading cfg files as darknet does, and refusing with file, line, layer and key."""

from __future__ import annotations

import pytest

from onnxfold.darknet import load_plan
from onnxfold.darknet.cfg import parse_cfg
from onnxfold.errors import OnnxfoldError
from tests.darknet.helpers import write_cfg

CONV = "[convolutional]\nbatch_normalize=1\nfilters=4\nsize=3\nstride=1\npad=1\nactivation=leaky\n"


def refusal(path, head: str = "raw", bn_eps: str = "darknet") -> str:
    with pytest.raises(OnnxfoldError) as e:
        load_plan(path, head=head, bn_eps=bn_eps)
    return str(e.value)


def test_whitespace_comments_aliases_crlf_bom_and_no_final_newline(tmp_path):
    text = (
        "\ufeff[network]\r\n# a comment\r\n; another\r\nwidth = 4 16\r\n"  # "4 16" is 416
        "height=\t416\r\nchannels=3\r\n\r\n"
        "[conv]\r\nfilters = 1 6\r\nsize=3\r\npad=1\r\nactivation = le aky\r\n"
        "[max]\r\nsize=2\r\nstride=2"
    )
    p = tmp_path / "x.cfg"
    p.write_bytes(text.encode("utf-8"))
    plan = load_plan(p, head="raw")
    assert plan.input.h == plan.input.w == 416
    conv, pool = plan.layers
    assert (conv.kind, conv.filters, conv.activation, conv.padding) == ("convolutional", 16,
                                                                       "leaky", 1)
    assert (pool.kind, pool.out.c, pool.out.h) == ("maxpool", 16, 208)


def test_first_occurrence_of_a_key_wins(tmp_path):
    plan = load_plan(write_cfg(tmp_path / "x.cfg", "[convolutional]\nfilters=4\nfilters=8\n"),
                     head="raw")
    assert plan.layers[0].filters == 4


def test_darknet_defaults(tmp_path):
    """No activation key means logistic; pad=1 means size/2 whatever `padding` says."""
    p = write_cfg(tmp_path / "x.cfg", "[convolutional]\nfilters=2\nsize=5\npad=1\npadding=7\n"
                  "\n[maxpool]\nstride=2\n\n[maxpool]\nsize=3\n")
    conv, pool2, pool3 = load_plan(p, head="raw").layers
    assert (conv.activation, conv.padding, conv.stride, conv.groups) == ("logistic", 2, (1, 1), 1)
    # maxpool: size defaults to stride, padding to size-1 (split begin padding/2, end the rest)
    assert (pool2.size, pool2.begin, pool2.end, pool2.out.h) == (2, 0, 1, 4)
    assert (pool3.size, pool3.stride, pool3.begin, pool3.end, pool3.out.h) == (3, 1, 1, 1, 4)


def test_route_relative_and_absolute_indices(tmp_path):
    body = CONV + "\n[maxpool]\nsize=2\nstride=2\n\n" + CONV + "\n[route]\nlayers=-3\n\n" \
        "[route]\nlayers=3,0\n"
    layers = load_plan(write_cfg(tmp_path / "x.cfg", body), head="raw").layers
    assert layers[3].sources == [0]
    assert layers[4].sources == [3, 0]
    assert (layers[4].out.c, layers[4].out.h) == (8, 8)


def test_yolov2_tiny_layout_and_float_count():
    """The real yolov2-tiny.weights is 44,948,600 bytes: 20-byte header + 11,237,145 floats."""
    from tests.darknet.helpers import REPO

    plan = load_plan(REPO / "models" / "yolov2-tiny.cfg")
    assert plan.floats() * 4 + 20 == 44_948_600
    assert [x.kind for x in plan.layers].count("convolutional") == 9
    assert (plan.layers[11].kind, plan.layers[11].out.h) == ("maxpool", 13)  # size 2 stride 1


@pytest.mark.parametrize(("body", "line", "message"), [
    (CONV + "\n[local]\nfilters=2\n", 14,
     "[local] layer 1: expected a layer onnxfold converts ([convolutional], [connected], "
     "[maxpool], [avgpool], [route], [shortcut], [upsample], [reorg], [softmax], [dropout], "
     "[cost], [region], [yolo]), found [local], not supported"),
    ("[convolutional]\nfilters=sixteen\n", 7,
     "[convolutional] layer 0, key 'filters': expected an integer, found 'sixteen'"),
    ("[convolutional]\nfilters=16\nsize=3x\n", 8,
     "[convolutional] layer 0, key 'size': expected an integer, found '3x'"),
    ("[convolutional]\nfilters=0\n", 7,
     "[convolutional] layer 0, key 'filters': expected a positive integer, found '0'"),
    ("[convolutional]\nfilters=2\nsize=-3\n", 8,
     "[convolutional] layer 0, key 'size': expected a positive integer, found '-3'"),
    ("[convolutional]\nfilters=2\nstride=0\n", 8,
     "[convolutional] layer 0, key 'stride': expected a positive integer, found '0'"),
    ("[convolutional]\nfilters=2\npadding=-1\n", 8,
     "[convolutional] layer 0, key 'padding': expected an integer >= 0, found '-1'"),
    ("[maxpool]\nstride=0\n", 7,
     "[maxpool] layer 0, key 'stride': expected a positive integer, found '0'"),
    ("[maxpool]\nsize=2\nstride=1\npadding=9\n", 9,
     "[maxpool] layer 0, key 'padding': expected padding that leaves an input cell in every "
     "2x2 window, found 9"),
    ("[convolutional]\nfilters=2\nsize=11\n", 8,
     "[convolutional] layer 0, key 'size': expected a layer whose output height is at least 1, "
     "found -2"),
    (CONV + "\n[route]\nlayers=-1,2\n", 15,
     "[route] layer 1, key 'layers': expected layers before this one (0..0 or -1..-1), found 2, "
     "which is layer 2"),
    (CONV + "\n[route]\nlayers=1\n", 15,
     "[route] layer 1, key 'layers': expected layers before this one (0..0 or -1..-1), found 1, "
     "which is layer 1"),
    (CONV + "\n[route]\nlayers=-3\n", 15,
     "[route] layer 1, key 'layers': expected layers before this one (0..0 or -1..-1), found -3, "
     "which is layer -2"),
    (CONV + "\n[route]\nlayers=0\ngroups=2\ngroup_id=1\n", 16,
     "[route] layer 1, key 'groups': expected groups=1 with --bn-eps darknet (the original "
     "darknet: it ignores route groups; convert with --bn-eps alexeyab for the AlexeyAB fork), "
     "found groups=2"),
    ("[convolutional]\nfilters=2\nactivation=mish\n", 8,
     "[convolutional] layer 0, key 'activation': expected an activation the original darknet "
     "knows with --bn-eps darknet (the original darknet: it runs 'mish' as ReLU; convert with "
     "--bn-eps alexeyab for the AlexeyAB fork), found 'mish'"),
    ("[convolutional]\nfilters=2\nactivation=elu\n", 8,
     "[convolutional] layer 0, key 'activation': expected an activation onnxfold converts "
     "(leaky, linear, logistic, relu, tanh, mish, swish, relu6, hard_mish, gelu), found 'elu'"),
    ("[convolutional]\nfilters=4\ngroups=2\n", 8,
     "[convolutional] layer 0, key 'groups': expected a divisor of the input channels (3) and "
     "of filters (4), found 2"),
    ("[convolutional]\nfilters=4\nbinary=1\n", 8,
     "[convolutional] layer 0, key 'binary': expected binary=0 (not supported by onnxfold "
     "convert), found binary=1"),
    ("[convolutional]\nfilters=4\nstride=2\nstride_x=1\n", 9,
     "[convolutional] layer 0, key 'stride_x': expected stride_x=2 with --bn-eps darknet (the "
     "original darknet: it does not read the key; convert with --bn-eps alexeyab for the "
     "AlexeyAB fork), found stride_x=1"),
    ("[convolutional]\nfilters=4\n\n[reorg]\nstride=3\n", 10,
     "[reorg] layer 1, key 'stride': expected a stride s with H, W divisible by s and C by s*s "
     "(input 4x8x8), found 3"),
    ("[convolutional]\nfilters=4\n\n[region]\nnum=1\nclasses=1\n", 9,
     "[region] layer 1: expected an input of num*(coords+1+classes) = 1*(4+1+1) = 6 channels, "
     "found 4 (input 4x8x8)"),
    ("[convolutional]\nfilters=6\n\n[region]\nnum=1\nclasses=1\n\n[maxpool]\n", 9,
     "[region] layer 1: expected [region] as the last layer, found layers after it"),
    ("[convolutional]\nfilters=6\n\n[region]\nnum=1\nclasses=1\nanchors=1,2,3\n", 12,
     "[region] layer 1, key 'anchors': expected 2*num = 2 numbers, found 3"),
])
def test_refusals_name_file_line_layer_and_key(tmp_path, body, line, message):
    p = write_cfg(tmp_path / "bad.cfg", body)
    assert refusal(p) == f"{p}:{line}: {message}"


@pytest.mark.parametrize(("net", "line", "message"), [
    ("width=0\nheight=8\nchannels=3", 2,
     "[net], key 'width': expected a positive integer, found '0'"),
    ("width=8\nheight=-8\nchannels=3", 3,
     "[net], key 'height': expected a positive integer, found '-8'"),
    ("width=8\nheight=8", 1,
     "[net], key 'channels': expected a value (the key has no default), found no such key"),
])
def test_net_refusals(tmp_path, net, line, message):
    p = write_cfg(tmp_path / "bad.cfg", CONV, net=net)
    assert refusal(p) == f"{p}:{line}: {message}"


def test_darknet_head_needs_a_softmax_region(tmp_path):
    p = write_cfg(tmp_path / "b.cfg", "[convolutional]\nfilters=6\n\n[region]\nnum=1\nclasses=1\n")
    assert refusal(p, head="darknet") == (
        f"{p}:9: [region] layer 1, key 'softmax': expected softmax=1 for --head darknet (or use "
        "--head raw), found softmax=0 (no key)")
    assert load_plan(p, head="raw").layers[-1].kind == "region"


def test_outputs_are_the_yolo_layers_else_the_last(tmp_path):
    """darknet's detector reads every [yolo] layer; a classifier's output is its last layer."""
    p = write_cfg(tmp_path / "a.cfg", CONV)
    assert load_plan(p, head="darknet").outputs == [0]
    yolo = "[convolutional]\nfilters=12\nsize=1\n\n[yolo]\nmask=0,1\nnum=3\nclasses=1\n"
    p = write_cfg(tmp_path / "y.cfg", f"{yolo}\n{yolo}\n[route]\nlayers=-3\n")
    assert load_plan(p, head="darknet").outputs == [1, 3]


@pytest.mark.parametrize(("text", "message"), [
    ("width=8\n[convolutional]\n", "<cfg>:1: expected the [net] section before any option, "
     "found 'width=8'"),
    ("[convolutional]\nfilters=2\n", "<cfg>: expected [net] or [network] as the first section, "
     "found [convolutional] at line 1"),
    ("[net]\nwidth=8\n", "<cfg>: expected at least one layer section after [net], found none"),
    ("[net]\nwidth=8\n[convolutional\n", "<cfg>:3: expected a section header like "
     "[convolutional], found '[convolutional'"),
    ("[net]\nwidth\n", "<cfg>:2: expected a line 'key=value', a [section] or a comment, "
     "found 'width'"),
    ("[net]\nwidth=\n", "<cfg>:2: expected a line 'key=value', a [section] or a comment, "
     "found 'width='"),
    ("", "<cfg>: expected [net] or [network] as the first section, found no section"),
])
def test_malformed_text(text, message):
    with pytest.raises(OnnxfoldError) as e:
        parse_cfg(text)
    assert str(e.value) == message


def test_unreadable_files(tmp_path):
    assert refusal(tmp_path / "missing.cfg") == (
        f"{tmp_path / 'missing.cfg'}: expected a darknet .cfg text file, found no such file")
    assert refusal(tmp_path) == f"{tmp_path}: expected a darknet .cfg text file, found a directory"
    p = tmp_path / "bin.cfg"
    p.write_bytes(b"[net]\n\xff\xfe\n")
    assert refusal(p) == (f"{p}: expected a darknet .cfg text file in UTF-8 or ASCII, found "
                          "byte 6: invalid start byte")


def test_not_a_regular_file(tmp_path):
    import os

    fifo = tmp_path / "fifo.cfg"
    os.mkfifo(fifo)
    assert refusal(fifo) == f"{fifo}: expected a darknet .cfg text file, found not a regular file"


def test_unknown_keys_warn_training_keys_do_not(tmp_path, caplog):
    """Decision: warn, as darknet's "Unused field" does, and convert; a typo'd key cannot
    change what we emit, since every key that matters is read (or refused) by name."""
    net = "width=8\nheight=8\nchannels=3\nbatch=64\nlearning_rate=0.001\nfancy=1"
    p = write_cfg(tmp_path / "x.cfg", CONV.replace("pad=1\n", "pad=1\nfilterz=8\n"), net=net)
    with caplog.at_level("WARNING", logger="onnxfold.darknet"):
        load_plan(p, head="raw")
    assert [r.getMessage() for r in caplog.records] == [
        f"{p}:7: [net], key 'fancy': unused (darknet ignores it too): fancy=1",
        f"{p}:15: [convolutional] layer 0, key 'filterz': unused (darknet ignores it too): "
        "filterz=8",
    ]
