"""Fleet sync: live state in Firebase, fleet cards down, and the signed ledger of every session."""
