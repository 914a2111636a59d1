"""The product commands behind `fewstep sample | eval | bench | demo` (one module each)."""
