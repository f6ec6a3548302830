"""The simulated annotator: queries, the cost table, the oracle and the ledger of revealed labels."""
