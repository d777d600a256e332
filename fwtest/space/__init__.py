"""Symbolic header space: proofs over every packet of the emergency profile.

    prove(ruleset, profile)            -> Proof     every packet class accepted, or findings
    diff(base, candidate, profile)     -> Diff      regressions, warnings, restored
    analyze(ruleset, profile)          -> Analysis  load-bearing, shadowed, redundant rules
    write_witnesses(proof_or_diff, d)  -> [Path]    witness packets as pcap files

Sets of packets are binary decision diagrams (``dd.cudd``, else ``dd.autoref``)
over the header fields netfilter rules test (``fwtest.space.header``).
"""

from fwtest.space.analysis import Analysis, RuleNote, analyze
from fwtest.space.diff import Diff, DiffChange, diff
from fwtest.space.header import HeaderSpace, ProofError
from fwtest.space.proof import ClassResult, Proof, ProofFinding, Witness, prove, write_witnesses

__all__ = ["Analysis", "ClassResult", "Diff", "DiffChange", "HeaderSpace", "Proof", "ProofError",
           "ProofFinding", "RuleNote", "Witness", "analyze", "diff", "prove", "write_witnesses"]
