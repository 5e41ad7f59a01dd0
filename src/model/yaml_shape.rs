//! A streaming check of a YAML document's shape, run before it is parsed.
//!
//! libyaml (which serde_norway parses with) scans every token of a flow
//! collection against every enclosing flow level, so a document of nested
//! flow mappings costs time quadratic in its depth (41 s at a depth of
//! 80,000, from an 800 KB body, in issue 21's probe). And serde_norway reads a whole document into
//! events before it deserializes any of it, so its own recursion limit comes
//! too late. This check reads the same parser's events one at a time and
//! stops at the first one past [`ShapeLimits`], so the work before a refusal
//! is at most the limits' worth (nodes times depth), whatever the body holds.
//!
//! A document with a syntax error passes: the check stops where the parser
//! does, and the parse proper reports the error at the same place, after at
//! most the same work.
//!
//! This is the only `unsafe` code of the crate besides `main.rs`: libyaml's
//! event API is a C API transliterated to Rust. The parser lives in a box that
//! never moves, its input outlives it, and every event is deleted after its
//! kind and position are read.

use std::mem::MaybeUninit;

use unsafe_libyaml_norway as unsafe_libyaml;

/// The most a document may hold.
#[derive(Debug, Clone, Copy)]
pub struct ShapeLimits {
    /// Mappings and sequences inside one another, block or flow.
    pub max_depth: usize,
    /// Scalars, aliases, mappings and sequences, in every document.
    pub max_nodes: usize,
}

/// Where a document went past a limit (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeError {
    TooDeep {
        limit: usize,
        line: usize,
        column: usize,
    },
    TooManyNodes {
        limit: usize,
        line: usize,
        column: usize,
    },
}

/// Reads `text`'s parser events until the end, a syntax error, or the first
/// one past `limits`.
pub fn check_shape(text: &str, limits: ShapeLimits) -> Result<(), ShapeError> {
    let mut parser = Box::new(MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit());
    let parser = parser.as_mut_ptr();
    // SAFETY: `parser` points into a box that lives (and does not move) until
    // the end of this function; `Initialized` deletes the parser before the
    // box is freed, since it is declared after it.
    unsafe {
        if unsafe_libyaml::yaml_parser_initialize(parser).fail {
            // Out of memory: leave it to the parse proper.
            return Ok(());
        }
        let _initialized = Initialized(parser);
        unsafe_libyaml::yaml_parser_set_encoding(parser, unsafe_libyaml::YAML_UTF8_ENCODING);
        // `text` outlives the parser, which only reads it.
        unsafe_libyaml::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
        let mut depth = 0usize;
        let mut nodes = 0usize;
        loop {
            let mut event = MaybeUninit::<unsafe_libyaml::yaml_event_t>::uninit();
            let event = event.as_mut_ptr();
            if unsafe_libyaml::yaml_parser_parse(parser, event).fail {
                return Ok(());
            }
            let kind = (*event).type_;
            let mark = (*event).start_mark;
            unsafe_libyaml::yaml_event_delete(event);
            let line = mark.line as usize + 1;
            let column = mark.column as usize + 1;
            match kind {
                unsafe_libyaml::YAML_STREAM_END_EVENT => return Ok(()),
                unsafe_libyaml::YAML_SCALAR_EVENT | unsafe_libyaml::YAML_ALIAS_EVENT => nodes += 1,
                unsafe_libyaml::YAML_SEQUENCE_START_EVENT
                | unsafe_libyaml::YAML_MAPPING_START_EVENT => {
                    nodes += 1;
                    depth += 1;
                    if depth > limits.max_depth {
                        return Err(ShapeError::TooDeep {
                            limit: limits.max_depth,
                            line,
                            column,
                        });
                    }
                }
                unsafe_libyaml::YAML_SEQUENCE_END_EVENT
                | unsafe_libyaml::YAML_MAPPING_END_EVENT => {
                    depth = depth.saturating_sub(1);
                }
                _ => {}
            }
            if nodes > limits.max_nodes {
                return Err(ShapeError::TooManyNodes {
                    limit: limits.max_nodes,
                    line,
                    column,
                });
            }
        }
    }
}

/// Deletes an initialized parser when dropped.
struct Initialized(*mut unsafe_libyaml::yaml_parser_t);

impl Drop for Initialized {
    fn drop(&mut self) {
        // SAFETY: the parser was initialized, and is deleted once.
        unsafe { unsafe_libyaml::yaml_parser_delete(self.0) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ShapeLimits = ShapeLimits {
        max_depth: 4,
        max_nodes: 10,
    };

    #[test]
    fn a_document_within_the_limits_passes() {
        assert_eq!(check_shape("a: {b: [1, 2]}\nc: 3\n", LIMITS), Ok(()));
        assert_eq!(check_shape("", LIMITS), Ok(()));
    }

    #[test]
    fn nesting_past_the_limit_is_refused_where_it_goes_past() {
        assert_eq!(
            check_shape("a:\n  b: [[[1]]]\n", LIMITS),
            Err(ShapeError::TooDeep {
                limit: 4,
                line: 2,
                column: 8
            })
        );
        // Deep flow nesting is refused at the first level past the limit
        // (a parse of the whole of it would take minutes).
        let deep = format!("{}1{}", "{a: ".repeat(100_000), "}".repeat(100_000));
        assert_eq!(
            check_shape(&deep, LIMITS),
            Err(ShapeError::TooDeep {
                limit: 4,
                line: 1,
                column: 17
            })
        );
    }

    #[test]
    fn too_many_nodes_are_refused_at_the_first_one_over() {
        let list = format!("[{}]", vec!["1"; 1_000].join(", "));
        assert_eq!(
            check_shape(&list, LIMITS),
            Err(ShapeError::TooManyNodes {
                limit: 10,
                line: 1,
                column: 29
            })
        );
    }

    #[test]
    fn a_syntax_error_is_left_to_the_parser() {
        assert_eq!(check_shape("a: [1, 2\nb: }", LIMITS), Ok(()));
    }
}
