"""The subsidy engine: the pure decision code of POLICY.md §5, standard library only.

Facts in (``facts``), decisions out (``outputs``), per-person state and fund ledgers
(``state``), the policy rule model (``policy``), the cases and rules a decision applies
(``cases``, ``rules``, ``domain``), and the replay that what-if runs and policy corrections
share (``replay``). No I/O and no third-party import: the adapters outside this package turn
the contract's validated models into facts (``services.subsidy.contract``), decisions into
contract models, policy files into policies (``services.subsidy.policy_files``) and states
into bytes (``services.subsidy.state_codec``). It may import ``shared.contract.vocabulary``,
itself standard library only, so a code cannot drift between the contract and the engine.
"""
