"""The replay engine: netfilter semantics over compact packet records.

``replay(ruleset, records)`` gives one ``Verdict`` per record from a fresh,
stateful ``Engine`` (conntrack, reassembly, SIP media pinholes, rate limits);
``explain(ruleset, record)`` walks one packet rule by rule without state.
"""

from fwtest.engine.explain import Explanation, explain
from fwtest.engine.replay import PATH_HOOKS, Engine, replay
from fwtest.engine.verdict import Verdict
from fwtest.engine.walk import Step

__all__ = ["PATH_HOOKS", "Engine", "Explanation", "Step", "Verdict", "explain", "replay"]
