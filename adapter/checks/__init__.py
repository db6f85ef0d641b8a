"""Checks shared by eligibility and dosing: choosing the value a rule may use (freshness, status,
conflicts), ULN multiples, renal function and limits on reported bounds. Pure: no I/O."""
