"""Config nodes declared by the modules that use them (config/registration.py): a dense head's
``cfg.MODEL.<NODE>`` registered on import, the duplicate / clash errors, the error for a config that
names a node nobody registered, and every entry point seeing the nodes before it reads a config."""
import ast
import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest
from yacs.config import CfgNode

from maskrcnn_benchmark.config import CONFIG_NODES, cfg as default_cfg, setup_cfg
from maskrcnn_benchmark.config.loading import ConfigError
from maskrcnn_benchmark.config.node import ConfigNode
from maskrcnn_benchmark.config.registration import (REGISTERING_MODULE, ConfigNodeRegistry,
                                                    UnregisteredNodeError)
from maskrcnn_benchmark.modeling.dense_heads import DENSE_HEADS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _root():
    """A small default config of the shape of the real one (a ConfigNode root, plain sub-nodes)."""
    root = ConfigNode()
    root.MODEL = CfgNode()
    root.MODEL.HEAD = ""
    root.MODEL.ATSS = CfgNode()
    root.MODEL.ATSS.TOPK = 9
    root.SOLVER = CfgNode()
    root.SOLVER.BASE_LR = 0.01
    return root


def _defaults(reg_max=16):
    node = CfgNode()
    node.NUM_CLASSES = 81
    node.REG_MAX = reg_max
    node.ANCHOR_SIZES = (32, 64)
    node.LOSS = CfgNode()
    node.LOSS.WEIGHT = 0.25
    return node


# ---- registering ------------------------------------------------------------------------------
def test_registered_node_is_in_the_root_and_in_every_later_clone(tmp_path):
    root = _root()
    before = root.clone()
    reg = ConfigNodeRegistry(root)
    node = reg.register("MODEL.NEW", _defaults(), owner="my.module")
    assert node is root.MODEL.NEW and type(node) is CfgNode and not isinstance(node, ConfigNode)
    assert dict(root.MODEL.NEW) == dict(_defaults()) and root.MODEL.NEW.LOSS.WEIGHT == 0.25
    assert "NEW" not in before.MODEL  # a clone taken before registration stays as it was
    assert root.clone().MODEL.NEW == _defaults()
    assert list(reg.nodes) == ["MODEL.NEW"] and reg.nodes["MODEL.NEW"].owner == "my.module"
    assert "MODEL.NEW" in reg
    # the registered defaults are a copy: changing the caller's node or the root leaves them
    root.MODEL.NEW.REG_MAX = 3
    assert reg.nodes["MODEL.NEW"].defaults.REG_MAX == 16

    # its keys merge from a yaml through setup_cfg; a typo inside it is refused by yacs
    good = tmp_path / "good.yaml"
    good.write_text("MODEL:\n  NEW:\n    REG_MAX: 8\n    LOSS:\n      WEIGHT: 1.5\n")
    cfg = setup_cfg(str(good), ["MODEL.NEW.NUM_CLASSES", "3"], base_cfg=_root_with_new())
    assert (cfg.MODEL.NEW.REG_MAX, cfg.MODEL.NEW.LOSS.WEIGHT, cfg.MODEL.NEW.NUM_CLASSES) == (8, 1.5, 3)
    typo = tmp_path / "typo.yaml"
    typo.write_text("MODEL:\n  NEW:\n    REG_MAXX: 8\n")
    with pytest.raises(KeyError, match=r"Non-existent config key: MODEL.NEW.REG_MAXX"):
        setup_cfg(str(typo), base_cfg=_root_with_new())
    with pytest.raises(KeyError, match=r"MODEL.NEW.REG_MAXX"):
        setup_cfg("", ["MODEL.NEW.REG_MAXX", "8"], base_cfg=_root_with_new())
    with pytest.raises(ValueError, match="REG_MAX"):  # yacs' type check applies to the node too
        setup_cfg("", ["MODEL.NEW.REG_MAX", "'eight'"], base_cfg=_root_with_new())


def _root_with_new():
    root = _root()
    ConfigNodeRegistry(root).register("MODEL.NEW", _defaults(), owner="my.module")
    return root


def test_dump_and_reload_keep_the_node(tmp_path):
    """``cfg.dump()`` (OUTPUT_DIR/config.yml, a checkpoint's "config") writes the node; the dump reads
    back through setup_cfg into the same config."""
    cfg = setup_cfg("", ["MODEL.NEW.REG_MAX", "5"], base_cfg=_root_with_new())
    text = cfg.dump()
    assert "NEW:" in text and "REG_MAX: 5" in text
    saved = tmp_path / "config.yml"
    saved.write_text(text)
    assert setup_cfg(str(saved), base_cfg=_root_with_new()) == cfg


def test_same_defaults_twice_is_a_no_op():
    root = _root()
    reg = ConfigNodeRegistry(root)
    first = reg.register("MODEL.NEW", _defaults(), owner="a")
    root.MODEL.NEW.REG_MAX = 4  # e.g. a test's change: registering again must not reset it
    again = reg.register("MODEL.NEW", _defaults(), owner="a")
    assert again is first and root.MODEL.NEW.REG_MAX == 4 and list(reg.nodes) == ["MODEL.NEW"]
    assert reg.register("MODEL.NEW", dict(_defaults()), owner="b") is first  # equal as a mapping


def test_other_defaults_for_a_registered_node_is_an_error_naming_both_owners_and_the_keys():
    reg = ConfigNodeRegistry(_root())
    reg.register("MODEL.NEW", _defaults(), owner="pkg.first")
    with pytest.raises(ConfigError) as e:
        reg.register("MODEL.NEW", _defaults(reg_max=7), owner="pkg.second")
    msg = str(e.value)
    assert "MODEL.NEW" in msg and "pkg.first" in msg and "pkg.second" in msg
    assert "MODEL.NEW.REG_MAX: 16 vs 7" in msg
    assert reg.root.MODEL.NEW.REG_MAX == 16  # unchanged


@pytest.mark.parametrize("key", ["MODEL.ATSS", "MODEL.HEAD", "SOLVER"])
def test_a_key_of_the_defaults_cannot_be_registered(key):
    root = _root()
    reg = ConfigNodeRegistry(root)
    with pytest.raises(ConfigError, match=rf"{key} is already a key of the default config "
                                          r"\(maskrcnn_benchmark/config/defaults.py\), not a registered node"):
        reg.register(key, _defaults(), owner="x")
    assert root == _root() and not reg.nodes


def test_the_real_defaults_refuse_a_head_node_named_like_a_built_in_one():
    with pytest.raises(ConfigError, match=r"MODEL.ATSS is already a key of the default config"):
        CONFIG_NODES.register("MODEL.ATSS", _defaults(), owner="x")
    assert "REG_MAX" not in default_cfg.MODEL.ATSS


@pytest.mark.parametrize("key, defaults, match", [
    ("model.new", {"A": 1}, r"dotted path of upper-case names"),
    ("MODEL..NEW", {"A": 1}, r"dotted path of upper-case names"),
    ("NOPE.NEW", {"A": 1}, r"its parent NOPE is not a node of the default config"),
    ("MODEL.HEAD.NEW", {"A": 1}, r"its parent MODEL.HEAD is not a node"),
    ("MODEL.NEW", 3, r"must be a CfgNode or a mapping"),
    ("MODEL.NEW", {"lower": 1}, r"\['lower'\] are not upper-case names"),
    ("MODEL.NEW", {"A": object()}, r"MODEL.NEW: .*"),  # not a yacs value type
])
def test_bad_registrations_are_clear_errors(key, defaults, match):
    root = _root()
    with pytest.raises(ConfigError, match=match):
        ConfigNodeRegistry(root).register(key, defaults, owner="x")
    assert root == _root()


def test_registration_into_a_frozen_root_keeps_it_frozen():
    root = _root()
    root.freeze()
    ConfigNodeRegistry(root).register("MODEL.NEW", _defaults(), owner="x")
    assert root.is_frozen() and root.MODEL.NEW.is_frozen() and root.MODEL.NEW.REG_MAX == 16


# ---- a config naming a node nobody registered ----------------------------------------------------
def test_unregistered_node_in_a_yaml_names_file_key_and_what_to_import(tmp_path):
    path = tmp_path / "head.yaml"
    path.write_text("MODEL:\n  HEAD: X\n  NEW:\n    REG_MAX: 8\n  ATSS:\n    TOPK: 3\n")
    with pytest.raises(UnregisteredNodeError) as e:
        setup_cfg(str(path), base_cfg=_root())
    msg = str(e.value)
    assert msg.startswith(f"config file {path}: MODEL.NEW is not a node of the default config")
    assert f"import {REGISTERING_MODULE}" in msg and "before setup_cfg / cfg_from_args" in msg
    assert isinstance(e.value, ValueError)  # a user-input error for the tools (status 2, no traceback)
    # registered, the same file merges
    assert setup_cfg(str(path), base_cfg=_root_with_new()).MODEL.NEW.REG_MAX == 8


def test_unregistered_node_on_the_command_line_names_the_key():
    with pytest.raises(UnregisteredNodeError, match=r"the command line \(MODEL.NEW.REG_MAX\): MODEL.NEW is not "
                                                    r"a node of the default config.*import " + REGISTERING_MODULE):
        setup_cfg("", ["MODEL.NEW.REG_MAX", "8"], base_cfg=_root())
    with pytest.raises(KeyError, match=r"Non-existent config key: MODEL.NEW"):  # a leaf: a typo, as before
        setup_cfg("", ["MODEL.NEW", "8"], base_cfg=_root())


def test_unknown_leaf_keys_keep_the_yacs_error(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("MODEL:\n  ATSS:\n    TOPKK: 3\n")
    with pytest.raises(KeyError, match=r"Non-existent config key: MODEL.ATSS.TOPKK"):
        setup_cfg(str(path), base_cfg=_root())


# ---- the dense heads (every node a head module registers; none is named here) -------------------------
HEAD_NODES = sorted(CONFIG_NODES.nodes)  # registered by importing maskrcnn_benchmark.modeling.dense_heads


def _node_yaml(tmp_path, key):
    """A yaml setting every key of the registered node ``key`` ("MODEL.X"), the numbers changed
    (+1, x1.5), and the node's expected values."""
    import yaml

    def changed(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return value + 1 if isinstance(value, int) else value * 1.5

    def as_data(node):
        return {k: as_data(v) if isinstance(v, dict) else
                (list(v) if isinstance(v, tuple) else changed(v)) for k, v in node.items()}

    parent, leaf = key.split(".")
    values = as_data(CONFIG_NODES.nodes[key].defaults)
    path = tmp_path / f"{leaf.lower()}.yaml"
    path.write_text(yaml.safe_dump({parent: {leaf: values}}))
    return str(path), values


def test_the_head_modules_register_nodes():
    """At least one dense head declares its node in its module (so the tests below check a real one)."""
    assert HEAD_NODES, "no dense head registers its own config node"


@pytest.mark.parametrize("key", HEAD_NODES)
def test_head_node_is_registered_by_its_module_into_the_default_config(key):
    node = CONFIG_NODES.nodes[key]
    heads = [h for h, n in DENSE_HEADS.config_nodes.items() if f"MODEL.{n}" == key]
    assert heads and all(DENSE_HEADS[h].__module__ == node.owner for h in heads), (key, node.owner, heads)
    assert sys.modules[node.owner].__file__.endswith(os.path.join("modeling", "dense_heads",
                                                                  node.owner.rsplit(".", 1)[1] + ".py"))
    leaf = key.split(".")[1]
    assert leaf not in _default_model_keys(), f"{key} is registered and also defined in defaults.py"
    assert default_cfg.clone().MODEL[leaf] == node.defaults and "NUM_CLASSES" in node.defaults
    # importing the module again (a reload) registers equal defaults: nothing happens
    assert CONFIG_NODES.register(key, node.defaults.clone(), owner="again") is default_cfg.MODEL[leaf]


def _default_model_keys():
    """The keys ``defaults.py`` itself assigns to ``_C.MODEL`` (read from its source)."""
    import re

    from maskrcnn_benchmark.config import defaults

    return set(re.findall(r"^_C\.MODEL\.([A-Z0-9_]+) = ", open(defaults.__file__).read(), flags=re.M))


def test_every_registered_node_belongs_to_a_registered_head():
    """The dense heads' nodes are the registered ones (or defaults.py's): a registered node is some
    head's ``config_node`` or a node a head ``reads``."""
    head_nodes = {f"MODEL.{n}" for nodes in DENSE_HEADS.nodes_read.values() for n in nodes}
    assert set(CONFIG_NODES.nodes) <= head_nodes
    for name, node in DENSE_HEADS.config_nodes.items():
        assert node in default_cfg.MODEL, f"head {name}: cfg.MODEL.{node} missing"


def test_head_registration_refuses_a_clashing_node_before_registering_the_builder():
    from maskrcnn_benchmark.modeling.dense_heads.registry import HeadRegistry

    heads = HeadRegistry("TEST_HEADS")
    with pytest.raises(ConfigError, match=r"MODEL.RETINANET is already a key of the default config"):
        heads.register("MINE", config_node="RETINANET", defaults=_defaults())(lambda cfg, c: None)
    assert "MINE" not in heads and "MINE" not in heads.config_nodes


# ---- entry points: the nodes exist before a config is read -------------------------------------------
def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("key", HEAD_NODES)
def test_train_net_imports_register_the_head_nodes_before_setup_cfg(tmp_path, key):
    """A fresh process with only tools/train_net.py's imports reads a yaml that sets every key of a
    head's node (MODEL.GFL ...) through its cfg_from_args, and a ``KEY VALUE`` override of it."""
    path, expected = _node_yaml(tmp_path, key)
    expected["NUM_CLASSES"] = 5
    out = _run(f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("train_net", "tools/train_net.py")
        tool = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(tool)  # its imports, not main()
        parser = tool.argparse.ArgumentParser()
        tool.add_config_args(parser)
        parser.add_argument("opts", nargs="*")
        args = parser.parse_args(["--config-file", {path!r}, "{key}.NUM_CLASSES", "5"])
        cfg = tool.cfg_from_args(parser, args)
        print(json.dumps(cfg.{key}))
    """)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


@pytest.mark.parametrize("key", HEAD_NODES)
def test_config_alone_refuses_a_head_node_saying_what_to_import(tmp_path, key):
    """A fresh process that imports only the config package: the head's node is not registered."""
    path, _ = _node_yaml(tmp_path, key)
    out = _run(f"""
        from maskrcnn_benchmark.config import setup_cfg
        setup_cfg({path!r})
    """)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith(f"maskrcnn_benchmark.config.registration.UnregisteredNodeError: config file "
                           f"{path}: {key} is not a node of the default config"), last
    assert f"import {REGISTERING_MODULE}" in last


def _config_readers():
    """(file, line, import statements run before the call) for every call of setup_cfg / cfg_from_args
    in tools/ and the package (but config/ itself): the module-level imports of a tool (the package
    module itself for a package file) and the imports of the enclosing function above the call."""
    files = sorted(glob.glob(os.path.join(ROOT, "tools", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(ROOT, "maskrcnn_benchmark", "**", "*.py"), recursive=True))
    for path in files:
        rel = os.path.relpath(path, ROOT)
        if rel.startswith(os.path.join("maskrcnn_benchmark", "config")):
            continue
        tree = ast.parse(open(path, encoding="utf-8").read())
        if rel.startswith("maskrcnn_benchmark"):
            top = [f"import {rel[:-3].replace(os.sep, '.')}"]
        else:
            top = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        funcs = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", getattr(call.func, "attr", None))
                    in ("setup_cfg", "cfg_from_args")):
                continue
            around = [f for f in funcs if f.lineno <= call.lineno <= f.end_lineno]
            local = [ast.unparse(n) for f in around for n in ast.walk(f)
                     if isinstance(n, (ast.Import, ast.ImportFrom)) and n.lineno < call.lineno]
            # the package's own imports (optional third-party ones, e.g. mmdet, need not be installed)
            yield rel, call.lineno, [i for i in top + local if "maskrcnn_benchmark" in i]


CONFIG_READERS = list(_config_readers())


def test_the_config_readers_are_found():
    found = {rel for rel, _, _ in CONFIG_READERS}
    assert {"tools/train_net.py", "tools/test_net.py", "tools/demo.py",
            "maskrcnn_benchmark/engine/predictor.py"} <= found, found


@pytest.mark.parametrize("rel, line, imports", CONFIG_READERS, ids=[f"{r}:{n}" for r, n, _ in CONFIG_READERS])
def test_every_entry_point_registers_the_nodes_before_it_reads_a_config(rel, line, imports):
    """In a fresh process, the imports an entry point runs before its setup_cfg / cfg_from_args call
    register every node that importing all dense heads registers."""
    out = _run(f"""
        import json, sys
        sys.path[:0] = [{ROOT!r}, {os.path.dirname(os.path.join(ROOT, rel))!r}]
        {'; '.join(imports)}
        from maskrcnn_benchmark.config import CONFIG_NODES
        seen = sorted(CONFIG_NODES.nodes)
        import {REGISTERING_MODULE}
        print(json.dumps([seen, sorted(CONFIG_NODES.nodes)]))
    """)
    assert out.returncode == 0, out.stderr
    seen, everything = json.loads(out.stdout.strip().splitlines()[-1])
    assert everything == HEAD_NODES
    assert seen == everything, (f"{rel}:{line} reads a config before {sorted(set(everything) - set(seen))} "
                                f"are registered: import {REGISTERING_MODULE} before it")
