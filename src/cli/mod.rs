//! The CLI verbs: apply, get, delete, watch, describe, and their output formats.
