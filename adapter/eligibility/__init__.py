"""Eligibility: criteria as data (adapter/protocols/*.yaml) plus the small rule functions here."""
