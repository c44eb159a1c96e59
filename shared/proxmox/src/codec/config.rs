//! PVE container config files (`/etc/pve/lxc/<vmid>.conf`), parsed losslessly: every line,
//! comment, blank and section keeps its exact text, so writing an unchanged file reproduces it
//! byte for byte. Changed entries are written as `key: value`, the form PVE writes.
//!
//! Layout: the main section, then `[pve:pending]` and snapshot sections `[name]`. Comment lines
//! (`#...`) at the top of a section are the guest's description.

use serde::Serialize;

use super::error::CodecError;

/// Which section a block of lines belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "lowercase")]
pub enum SectionKind {
    /// The current configuration.
    Main,
    /// `[pve:pending]`: changes not yet applied to the running container.
    Pending,
    /// `[name]`: a snapshot.
    Snapshot(String),
}

/// One `key: value` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, such as `net0` or `lxc.apparmor.profile`.
    pub key: String,
    /// The value, without the separator's whitespace.
    pub value: String,
    /// The exact text, when the entry is unchanged since parsing.
    raw: Option<String>,
}

/// One line of a section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// `key: value`.
    Entry(Entry),
    /// `#...`, kept verbatim.
    Comment(String),
    /// An empty or whitespace-only line, kept verbatim.
    Blank(String),
}

/// A section: its header line (none for main) and its lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Main, pending or a snapshot.
    pub kind: SectionKind,
    header: Option<String>,
    /// The lines in file order.
    pub lines: Vec<Line>,
}

/// A whole config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFile {
    /// Main first, then pending and snapshots in file order.
    pub sections: Vec<Section>,
    /// Whether the text ended with a newline.
    trailing_newline: bool,
}

fn valid_key(key: &str) -> bool {
    if let Some(rest) = key.strip_prefix("lxc.") {
        return !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    }
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

impl ConfigFile {
    /// Parses a config file. Fails on a line that is not an entry, comment, blank or header.
    pub fn parse(text: &str) -> Result<Self, CodecError> {
        let trailing_newline = text.ends_with('\n');
        let body = text.strip_suffix('\n').unwrap_or(text);
        let mut sections = vec![Section {
            kind: SectionKind::Main,
            header: None,
            lines: Vec::new(),
        }];
        if text.is_empty() {
            return Ok(Self {
                sections,
                trailing_newline,
            });
        }
        for (index, raw) in body.split('\n').enumerate() {
            let line_no = index + 1;
            let trimmed = raw.trim();
            let current = sections.len() - 1;
            if trimmed.is_empty() {
                sections[current].lines.push(Line::Blank(raw.to_string()));
            } else if trimmed.starts_with('#') {
                sections[current].lines.push(Line::Comment(raw.to_string()));
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                let name = name.trim();
                if name.is_empty() {
                    return Err(CodecError::Line {
                        line: line_no,
                        text: shorten(raw),
                    });
                }
                let kind = if name == "pve:pending" {
                    SectionKind::Pending
                } else {
                    SectionKind::Snapshot(name.to_string())
                };
                sections.push(Section {
                    kind,
                    header: Some(raw.to_string()),
                    lines: Vec::new(),
                });
            } else {
                let Some((key, value)) = raw.split_once(':') else {
                    return Err(CodecError::Line {
                        line: line_no,
                        text: shorten(raw),
                    });
                };
                let key = key.trim();
                if !valid_key(key) {
                    return Err(CodecError::Key {
                        line: line_no,
                        key: shorten(key),
                    });
                }
                sections[current].lines.push(Line::Entry(Entry {
                    key: key.to_string(),
                    value: value.trim().to_string(),
                    raw: Some(raw.to_string()),
                }));
            }
        }
        Ok(Self {
            sections,
            trailing_newline,
        })
    }

    /// Writes the file: unchanged lines verbatim, changed entries as `key: value`.
    pub fn write(&self) -> String {
        self.render(false)
    }

    /// Writes the file in canonical form: every entry as `key: value`, every header as
    /// `[name]`, comments and blank lines kept, a final newline.
    pub fn write_canonical(&self) -> String {
        self.render(true)
    }

    fn render(&self, canonical: bool) -> String {
        let mut lines: Vec<String> = Vec::new();
        for s in &self.sections {
            match (&s.kind, &s.header, canonical) {
                (SectionKind::Main, _, _) => {}
                (_, Some(h), false) => lines.push(h.clone()),
                (SectionKind::Pending, _, _) => lines.push("[pve:pending]".into()),
                (SectionKind::Snapshot(n), _, _) => lines.push(format!("[{n}]")),
            }
            for l in &s.lines {
                lines.push(match (l, canonical) {
                    (Line::Entry(e), false) => e.raw.clone().unwrap_or_else(|| format!("{}: {}", e.key, e.value)),
                    (Line::Entry(e), true) => format!("{}: {}", e.key, e.value),
                    (Line::Comment(c), false) => c.clone(),
                    (Line::Comment(c), true) => c.trim().to_string(),
                    (Line::Blank(b), false) => b.clone(),
                    (Line::Blank(_), true) => String::new(),
                });
            }
        }
        let mut out = lines.join("\n");
        if self.trailing_newline || canonical {
            out.push('\n');
        }
        out
    }

    /// The main section.
    pub fn main(&self) -> &Section {
        &self.sections[0]
    }

    /// The main section, for changes.
    pub fn main_mut(&mut self) -> &mut Section {
        &mut self.sections[0]
    }

    /// The pending section, if any.
    pub fn pending(&self) -> Option<&Section> {
        self.sections.iter().find(|s| s.kind == SectionKind::Pending)
    }

    /// A snapshot section by name.
    pub fn snapshot(&self, name: &str) -> Option<&Section> {
        self.sections
            .iter()
            .find(|s| matches!(&s.kind, SectionKind::Snapshot(n) if n == name))
    }

    /// A snapshot section by name, for changes.
    pub fn snapshot_mut(&mut self, name: &str) -> Option<&mut Section> {
        self.sections
            .iter_mut()
            .find(|s| matches!(&s.kind, SectionKind::Snapshot(n) if n == name))
    }

    /// The pending section, for changes; created right after the main section when missing.
    pub fn pending_mut(&mut self) -> &mut Section {
        let index = match self.sections.iter().position(|s| s.kind == SectionKind::Pending) {
            Some(i) => i,
            None => {
                self.separate(0);
                self.sections.insert(1, Section::new(SectionKind::Pending));
                1
            }
        };
        &mut self.sections[index]
    }

    /// Removes the pending section, returning it.
    pub fn take_pending(&mut self) -> Option<Section> {
        let i = self.sections.iter().position(|s| s.kind == SectionKind::Pending)?;
        let section = self.sections.remove(i);
        self.trim_separator();
        Some(section)
    }

    /// Adds a snapshot section (at the end, as PVE does) holding `lines`; replaces one of the
    /// same name.
    pub fn put_snapshot(&mut self, name: &str, lines: Vec<Line>) {
        let mut section = Section::new(SectionKind::Snapshot(name.to_string()));
        section.lines = lines;
        if let Some(existing) = self.snapshot_mut(name) {
            *existing = section;
            return;
        }
        let last = self.sections.len() - 1;
        self.separate(last);
        self.sections.push(section);
    }

    /// Removes a snapshot section, returning it.
    pub fn remove_snapshot(&mut self, name: &str) -> Option<Section> {
        let i = self
            .sections
            .iter()
            .position(|s| matches!(&s.kind, SectionKind::Snapshot(n) if n == name))?;
        let section = self.sections.remove(i);
        self.trim_separator();
        Some(section)
    }

    /// PVE separates sections with a blank line: makes section `i` end with one.
    fn separate(&mut self, i: usize) {
        let lines = &mut self.sections[i].lines;
        if !matches!(lines.last(), Some(Line::Blank(_))) {
            lines.push(Line::Blank(String::new()));
        }
    }

    /// Drops the separator a removed last section leaves behind.
    fn trim_separator(&mut self) {
        let last = self.sections.len() - 1;
        if let Some(Line::Blank(_)) = self.sections[last].lines.last() {
            self.sections[last].lines.pop();
        }
    }

    /// Snapshot names in file order.
    pub fn snapshot_names(&self) -> Vec<&str> {
        self.sections
            .iter()
            .filter_map(|s| match &s.kind {
                SectionKind::Snapshot(n) => Some(n.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl Section {
    /// An empty section of the given kind.
    pub fn new(kind: SectionKind) -> Self {
        Self {
            kind,
            header: None,
            lines: Vec::new(),
        }
    }

    /// The value of a key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries().find(|e| e.key == key).map(|e| e.value.as_str())
    }

    /// Every entry, in order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(e) => Some(e),
            _ => None,
        })
    }

    /// The description: the comment lines, without their `#`.
    pub fn description(&self) -> String {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Comment(c) => Some(c.trim_start().trim_start_matches('#')),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Replaces the description (the comment lines, which PVE writes first) with `text`;
    /// empty: none.
    pub fn set_description(&mut self, text: &str) {
        self.lines.retain(|l| !matches!(l, Line::Comment(_)));
        let comments: Vec<Line> = text.lines().map(|l| Line::Comment(format!("#{l}"))).collect();
        self.lines.splice(0..0, comments);
    }

    /// Sets a key, in place when it exists (keeping its position), else appended.
    pub fn set(&mut self, key: &str, value: &str) {
        for l in &mut self.lines {
            if let Line::Entry(e) = l
                && e.key == key
            {
                if e.value != value {
                    e.value = value.to_string();
                    e.raw = None;
                }
                return;
            }
        }
        self.lines.push(Line::Entry(Entry {
            key: key.to_string(),
            value: value.to_string(),
            raw: None,
        }));
    }

    /// Removes a key; returns its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        let pos = self
            .lines
            .iter()
            .position(|l| matches!(l, Line::Entry(e) if e.key == key))?;
        match self.lines.remove(pos) {
            Line::Entry(e) => Some(e.value),
            _ => None,
        }
    }
}

fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const SAMPLE: &str = "#web server\n#second line\narch: amd64\nnet0: name=eth0,bridge=vmbr0,ip=dhcp,type=veth\nlxc.apparmor.profile: unconfined\nparent: s1\n\n[pve:pending]\nmemory: 4096\ndelete: swap\n\n[s1]\narch: amd64\nsnaptime: 1700000000\n";

    #[test]
    fn sections_entries_and_description_are_read() {
        let c = ConfigFile::parse(SAMPLE).unwrap();
        assert_eq!(c.main().get("arch"), Some("amd64"));
        assert_eq!(c.main().get("lxc.apparmor.profile"), Some("unconfined"));
        assert_eq!(c.main().description(), "web server\nsecond line");
        assert_eq!(c.pending().unwrap().get("memory"), Some("4096"));
        assert_eq!(c.snapshot_names(), vec!["s1"]);
        assert_eq!(c.snapshot("s1").unwrap().get("snaptime"), Some("1700000000"));
        assert_eq!(c.write(), SAMPLE);
    }

    #[test]
    fn odd_spacing_survives_a_round_trip_and_canonical_form_normalises_it() {
        let text = "arch:amd64\nmemory:    512  \n   \n[ snap ]\nswap: 0";
        let c = ConfigFile::parse(text).unwrap();
        assert_eq!(c.write(), text);
        assert_eq!(c.write_canonical(), "arch: amd64\nmemory: 512\n\n[snap]\nswap: 0\n");
    }

    #[test]
    fn set_keeps_position_and_rewrites_only_the_changed_line() {
        let mut c = ConfigFile::parse("arch:  amd64\nmemory: 512\nswap: 0\n").unwrap();
        c.main_mut().set("memory", "1024");
        c.main_mut().set("cores", "2");
        assert_eq!(c.write(), "arch:  amd64\nmemory: 1024\nswap: 0\ncores: 2\n");
        assert_eq!(c.main_mut().remove("swap").as_deref(), Some("0"));
        assert_eq!(c.write(), "arch:  amd64\nmemory: 1024\ncores: 2\n");
    }

    #[test]
    fn pending_and_snapshot_sections_are_added_and_removed_in_pve_layout() {
        let mut c = ConfigFile::parse("arch: amd64\nmemory: 512\n").unwrap();
        c.pending_mut().set("memory", "1024");
        let lines: Vec<Line> = c.main().entries().cloned().map(Line::Entry).collect();
        c.put_snapshot("s1", lines);
        assert_eq!(
            c.write(),
            "arch: amd64\nmemory: 512\n\n[pve:pending]\nmemory: 1024\n\n[s1]\narch: amd64\nmemory: 512\n"
        );
        assert!(c.take_pending().is_some());
        assert!(c.remove_snapshot("s1").is_some());
        assert_eq!(c.write(), "arch: amd64\nmemory: 512\n");
        assert!(c.snapshot("s1").is_none() && c.pending().is_none());
    }

    #[test]
    fn bad_lines_are_errors_that_name_the_line() {
        let err = ConfigFile::parse("arch: amd64\nthis is not a config line\n").unwrap_err();
        assert!(matches!(err, CodecError::Line { line: 2, .. }), "{err}");
        let err = ConfigFile::parse("Arch: amd64\n").unwrap_err();
        assert!(matches!(err, CodecError::Key { line: 1, .. }), "{err}");
        assert!(ConfigFile::parse("[]\n").is_err());
    }
}
