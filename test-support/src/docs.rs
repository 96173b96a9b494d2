//! The markdown docs of the repository (`README.md`, `docs/*.md`), read by
//! the tests that run their commands or check their lists. A section is
//! found by its heading line, so a test names what it runs the way a reader
//! would.

use std::path::PathBuf;

/// One markdown file of the repository, read whole.
pub struct Doc {
    /// Its path from the repository root, for messages.
    path: String,
    /// Its text.
    text: String,
}

/// Reads the doc at `path` from the repository root (`"README.md"`,
/// `"docs/broker-api.md"`). Panics naming the file if it cannot be read.
pub fn doc(path: &str) -> Doc {
    let full = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path);
    let text = std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()));
    Doc {
        path: path.to_string(),
        text,
    }
}

impl Doc {
    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The text under the heading line `heading` (for example
    /// `"## Metrics"`), up to the next heading of the same or a higher
    /// level (subsections included). Lines in fenced code blocks are never
    /// headings. Panics naming the file if the heading is not there exactly
    /// once.
    pub fn section(&self, heading: &str) -> &str {
        let level = heading_level(heading)
            .unwrap_or_else(|| panic!("{heading:?} is not a markdown heading"));
        let lines = lines(&self.text);
        let found: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| l.heading.is_some() && l.text.trim_end() == heading)
            .map(|(i, _)| i)
            .collect();
        let [i] = found[..] else {
            panic!(
                "{} has {} headings {heading:?}, not one",
                self.path,
                found.len()
            );
        };
        let start = lines[i].end;
        let end = lines[i + 1..]
            .iter()
            .find(|l| l.heading.is_some_and(|h| h <= level))
            .map_or(self.text.len(), |l| l.start);
        &self.text[start..end]
    }
}

/// The bodies of the fenced code blocks of `markdown` whose fence names
/// `lang` (```` ```sh ````), in order, each ending in a newline. A block
/// indented under a list item loses that indentation.
pub fn code_blocks(markdown: &str, lang: &str) -> Vec<String> {
    let open = format!("```{lang}");
    let mut out = Vec::new();
    // The block being read: its fence's indentation and its body so far,
    // or `None` inside a block of another language.
    let mut current: Option<Option<(usize, String)>> = None;
    for l in lines(markdown) {
        let line = l.text.trim_end_matches(['\n', '\r']);
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("```") => {
                current = Some(
                    (trimmed.trim_end() == open)
                        .then(|| (line.len() - trimmed.len(), String::new())),
                );
            }
            None => {}
            Some(block) if trimmed.trim_end() == "```" => {
                if let Some((_, body)) = block.take() {
                    out.push(body);
                }
                current = None;
            }
            Some(Some((indent, body))) => {
                let cut = line.len() - line.trim_start_matches(' ').len();
                body.push_str(&line[cut.min(*indent)..]);
                body.push('\n');
            }
            Some(None) => {}
        }
    }
    out
}

/// One line of a markdown text: where it is, and its heading level if it is
/// a heading outside a code block.
struct Line<'a> {
    /// Byte offset of its first character.
    start: usize,
    /// Byte offset just past its newline.
    end: usize,
    /// The line, newline included.
    text: &'a str,
    /// `Some(n)` for a heading of `n` `#`s.
    heading: Option<usize>,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_code = false;
    for text in text.split_inclusive('\n') {
        if text.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let heading = if in_code { None } else { heading_level(text) };
        out.push(Line {
            start,
            end: start + text.len(),
            text,
            heading,
        });
        start += text.len();
    }
    out
}

/// `Some(n)` if `line` is a heading of `n` `#`s followed by a space.
fn heading_level(line: &str) -> Option<usize> {
    let n = line.len() - line.trim_start_matches('#').len();
    (n > 0 && line[n..].starts_with(' ')).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MD: &str = "# Title\n\nintro\n\n## A\n\n```sh\necho a\n# not a heading\n```\n\n### A.1\n\n1. step:\n\n   ```sh\n   echo b\n\n   echo c\n   ```\n\n```text\necho not sh\n```\n\n## B\n\nb\n";

    fn md() -> Doc {
        Doc {
            path: "test.md".into(),
            text: MD.into(),
        }
    }

    #[test]
    fn a_section_runs_to_the_next_heading_of_its_level() {
        let a = md();
        let a = a.section("## A");
        assert!(a.starts_with("\n```sh\necho a\n"), "{a:?}");
        assert!(a.contains("### A.1") && a.ends_with("```\n\n"), "{a:?}");
        assert_eq!(md().section("### A.1").lines().last(), Some(""));
        assert_eq!(md().section("## B"), "\nb\n");
    }

    #[test]
    fn code_blocks_of_one_language_lose_their_list_indentation() {
        let d = md();
        assert_eq!(
            code_blocks(d.section("## A"), "sh"),
            ["echo a\n# not a heading\n", "echo b\n\necho c\n"]
        );
        assert_eq!(code_blocks(d.text(), "text"), ["echo not sh\n"]);
    }

    #[test]
    #[should_panic(expected = "test.md has 0 headings \"## C\", not one")]
    fn a_missing_section_names_the_file() {
        md().section("## C");
    }
}
