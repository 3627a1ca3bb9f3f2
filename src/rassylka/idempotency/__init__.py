"""``Idempotency-Key``: a CRM's retry of a create gets the first answer, not a second object."""
