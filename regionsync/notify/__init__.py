"""Telling people what changed: the outbox written in the sync's transaction, and its
delivery to a webhook (Standard Webhooks) or Slack after the commit."""
