"""volnb.registry.RegistryFollower: the `state.json` reload that volnb.service.Service and volnb.panel_service.PanelService share.

A toy artefact kind (one `model.json` holding a weight, loaded by `toy_loader`) keeps every case small enough to check
by hand: a registry with two versions, v0001 (weight 1) and v0002 (weight 2), the first current.
"""
import json
import threading
from types import SimpleNamespace

import pytest

from volnb.registry import Registry, RegistryError, RegistryFollower


def toy_loader(path):
    w = json.loads((path / "model.json").read_text())["weight"]
    return SimpleNamespace(kind="toy", features=["x"], threshold=0.5, weight=w)


class Toy(RegistryFollower):
    "A follower that records every hook it is called through, in order."
    slot, no_current = "model", "no toy version is current in state.json"

    def __init__(self, registry, interval=0.0):
        self.registry, self.settings, self._lock = registry, SimpleNamespace(reload_interval_s=interval), threading.RLock()
        self.problems, self.requested, self.current, self.model = {}, "ml", None, None
        self.events, self.failures = [], 0
        self.reload(force=True)

    def _load_current(self, version):
        self.events.append(("load", version))
        try: return SimpleNamespace(version=version, weight=self.registry.load(version).weight), None
        except RegistryError as e: return None, f"toy {version}: {e}"

    def _load_failed(self): self.failures += 1
    def _on_state_error(self): self.events.append(("state_error",))
    def _on_state(self, st, force): self.events.append(("state", st["current"], force))
    def _on_reload(self): self.events.append(("reloaded",))


@pytest.fixture
def reg(tmp_path):
    r = Registry(tmp_path / "registry", loader=toy_loader)
    for name, w in (("a", 1.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.json").write_text(json.dumps({"weight": w}))
    assert [r.register(tmp_path / "a"), r.register(tmp_path / "b")] == ["v0001", "v0002"]
    return r


def test_loads_the_current_version_once(reg):
    f = Toy(reg)
    assert (f.model.version, f.model.weight, f.requested, f.current, f.problems) == ("v0001", 1.0, "ml", "v0001", {"ml": None})
    assert f.events == [("state", "v0001", True), ("load", "v0001"), ("reloaded",)]     # the state hook runs before the load
    assert f.reload() is False and len(f.events) == 3                                   # state.json unchanged: not even parsed
    assert f.reload(force=True) is True and f.events[3:] == [("state", "v0001", True), ("load", "v0001"), ("reloaded",)]


def test_promote_variant_and_rollback_reach_the_follower(reg):
    f = Toy(reg)
    reg.promote("v0002")
    assert f.reload() is True and (f.model.version, f.model.weight, f.current) == ("v0002", 2.0, "v0002")
    n = len(f.events)
    reg.set_variant("baseline")
    assert f.reload() is True and f.requested == "baseline" and f.model.version == "v0002"
    assert f.events[n:] == [("state", "v0002", False), ("reloaded",)]                 # same version: nothing reloaded
    reg.rollback()
    assert f.reload() is True and (f.model.version, f.model.weight) == ("v0001", 1.0)
    assert f.failures == 0


def test_unreadable_state_keeps_what_was_loaded(reg):
    f = Toy(reg)
    good = reg.state_path.read_bytes()
    reg.state_path.write_text("{not json")
    assert f.reload() is True and (f.model.version, f.current, f.events[-1]) == ("v0001", "v0001", ("state_error",))
    assert f.problems["state"] == ("cannot read state.json: Expecting property name enclosed in double quotes: "
                                   "line 1 column 2 (char 1); serving what was loaded before")
    assert f.reload() is False                                                          # the same bad bytes: not re-read
    reg.state_path.write_text(json.dumps({"current": "v0002", "variant": "gpu"}))
    assert f.reload() is True and f.model.version == "v0001" and f.problems["state"] == (
        "state.json: field 'variant' must be one of ['ml', 'baseline'], not 'gpu'; serving what was loaded before")
    n = len(f.events)
    reg.state_path.write_bytes(good)
    assert f.reload() is True and "state" not in f.problems and f.model.version == "v0001"
    assert f.events[n:] == [("state", "v0001", False), ("reloaded",)]
    assert f.failures == 0


def test_corrupt_new_version_empties_the_slot_and_is_retried(reg):
    f = Toy(reg)
    registered = (reg.path("v0002") / "model.json").read_bytes()
    (reg.path("v0002") / "model.json").write_text(json.dumps({"weight": 3.0}))
    reg.promote("v0002")
    assert f.reload() is True
    # the previous version (v0001) is NOT kept: the slot is empty, so the service's fallback answers, and the reason is kept
    assert (f.model, f.current, f.failures) == (None, "v0002", 1)
    assert f.problems["ml"] == "toy v0002: artefact file versions/v0002/model.json is corrupt: its sha256 differs from the registered one"
    assert f.reload() is False and f.failures == 1                                      # no retry until state.json changes
    (reg.path("v0002") / "model.json").write_bytes(registered)
    reg.set_variant("ml")                                                               # any change of state.json
    assert f.reload() is True and (f.model.version, f.model.weight, f.problems["ml"], f.failures) == ("v0002", 2.0, None, 1)


def test_no_current_version(tmp_path, reg):
    f = Toy(Registry(tmp_path / "empty", loader=toy_loader))                           # no state.json at all
    assert (f.model, f.current, f.problems, f.failures) == (None, None, {"ml": "no toy version is current in state.json"}, 0)
    assert f.events == [("state", None, True), ("reloaded",)] and f.reload() is False
    g = Toy(reg)
    reg.state_path.write_text(json.dumps({"current": None, "history": ["v0001"]}))
    assert g.reload() is True and (g.model, g.problems["ml"], g.failures) == (None, "no toy version is current in state.json", 0)


def test_maybe_reload_looks_at_most_every_interval(reg):
    f = Toy(reg, interval=3600)
    assert f.maybe_reload() is False                                                    # looked (first time), nothing changed
    reg.promote("v0002")
    assert f.maybe_reload() is False and f.model.version == "v0001"                     # within the hour: not looked at
    assert f.reload() is True and f.model.version == "v0002"
    g = Toy(reg, interval=0)
    reg.rollback()
    assert g.maybe_reload() is True and g.model.version == "v0001"


def test_both_services_use_it():
    from volnb.panel_service import PanelService
    from volnb.service import Service
    for cls, slot in ((Service, "ml"), (PanelService, "model")):
        assert issubclass(cls, RegistryFollower) and cls.slot == slot
        assert cls.reload is RegistryFollower.reload and cls.maybe_reload is RegistryFollower.maybe_reload
