//! Black-box tests of redtower against real Redis servers; see `tests/`.
