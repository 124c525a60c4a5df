"""Fakes that ship with regionsync: a Kaleyra API and a webhook receiver on loopback, for
trials (``regionsync fake-api``, compose's ``fake`` profile) and tests.

They import the core; the core never imports them (an import-linter contract).
"""
