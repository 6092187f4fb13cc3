//! The optional node inventory: names, groups and tenants for node addresses, so that events
//! and metrics name nodes rather than only addresses.
//!
//! Two formats, chosen by extension (`.csv`, `.json`; otherwise a leading `[` means JSON):
//!
//! ```text
//! name,address,vlan,tenant,group
//! core-rtr-1,198.18.0.1,0,1,core
//! ```
//!
//! ```json
//! [{"name": "core-rtr-1", "address": "198.18.0.1", "vlan": 0, "tenant": 1, "group": "core"}]
//! ```
//!
//! `name` and `address` are required; `vlan` defaults to 0 (untagged); `group` is optional.
//! Tenant isolation: a node's tenant is the tenant of the longest monitored prefix that holds
//! it (as in the kernel). A `tenant` given in the inventory must agree with it; it can only be
//! left out or confirmed, never moved. Without prefixes (none passed), the `tenant` column is
//! required. Nodes outside every monitored prefix are left out with a warning (the kernel
//! never reports them). Every bad row is reported with its line (CSV) or index (JSON) and
//! field; duplicate nodes (same address on the same VLAN) and duplicate names within a tenant
//! are errors.

use std::{
    collections::{BTreeMap, HashMap},
    fmt, fs, io,
    net::IpAddr,
    path::Path,
};

use opha_common::{
    node::NodeKey,
    wire::{NodeRef, TenantId},
};
use serde::Deserialize;

use crate::loader::MonitoredPrefix;

/// What the inventory knows about a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub group: Option<String>,
    pub tenant: TenantId,
}

/// Where a row is: a CSV line or a JSON array index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Loc {
    Line(u64),
    Index(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(l) => write!(f, "line {l}"),
            Loc::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// One row, checked field by field but not yet against the others or the prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub loc: Loc,
    pub name: String,
    pub addr: IpAddr,
    pub vlan: u16,
    pub tenant: Option<u32>,
    pub group: Option<String>,
}

/// One thing wrong with the inventory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// None for problems with the file as a whole (header, syntax without a position).
    pub loc: Option<Loc>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.loc, &self.field) {
            (Some(Loc::Index(i)), Some(field)) => write!(f, "[{i}].{field}: {}", self.message),
            (Some(loc), Some(field)) => write!(f, "{loc}: {field}: {}", self.message),
            (Some(loc), None) => write!(f, "{loc}: {}", self.message),
            (None, Some(field)) => write!(f, "{field}: {}", self.message),
            (None, None) => f.write_str(&self.message),
        }
    }
}

fn problem(loc: Option<Loc>, field: Option<&str>, message: impl Into<String>) -> Problem {
    Problem {
        loc,
        field: field.map(str::to_string),
        message: message.into(),
    }
}

/// At most this many problems are listed; the rest are counted.
pub const MAX_LISTED: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("{file}: {error}")]
    Read { file: String, error: io::Error },
    #[error("{file}: {}", render(problems, *total))]
    Invalid {
        file: String,
        /// The first [`MAX_LISTED`] problems.
        problems: Vec<Problem>,
        /// How many there were.
        total: usize,
    },
}

impl InventoryError {
    pub fn problems(&self) -> &[Problem] {
        match self {
            InventoryError::Read { .. } => &[],
            InventoryError::Invalid { problems, .. } => problems,
        }
    }
}

fn render(problems: &[Problem], total: usize) -> String {
    match problems {
        [one] if total == 1 => one.to_string(),
        many => {
            let mut s = format!("{total} problems:");
            for p in many {
                s.push_str("\n  ");
                s.push_str(&p.to_string());
            }
            if total > many.len() {
                s.push_str(&format!("\n  ... and {} more", total - many.len()));
            }
            s
        }
    }
}

fn invalid(file: &str, mut problems: Vec<Problem>) -> InventoryError {
    let total = problems.len();
    problems.truncate(MAX_LISTED);
    InventoryError::Invalid {
        file: file.to_string(),
        problems,
        total,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

impl Format {
    /// By extension, else by the first non-blank character.
    pub fn detect(path: &Path, text: &str) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => Format::Json,
            Some(e) if e.eq_ignore_ascii_case("csv") => Format::Csv,
            _ if text.trim_start().starts_with('[') => Format::Json,
            _ => Format::Csv,
        }
    }
}

/// The lookup.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    nodes: HashMap<NodeKey, NodeInfo>,
    warnings: Vec<String>,
}

impl Inventory {
    /// Reads, checks and resolves an inventory file against the monitored prefixes.
    pub fn load(path: &Path, prefixes: &[MonitoredPrefix]) -> Result<Self, InventoryError> {
        let file = path.display().to_string();
        let text = fs::read_to_string(path).map_err(|error| InventoryError::Read {
            file: file.clone(),
            error,
        })?;
        Self::from_text(&text, Format::detect(path, &text), &file, prefixes)
    }

    /// As [`Inventory::load`], from text; `file` names the source in errors.
    pub fn from_text(
        text: &str,
        format: Format,
        file: &str,
        prefixes: &[MonitoredPrefix],
    ) -> Result<Self, InventoryError> {
        let (entries, mut problems) = match format {
            Format::Csv => parse_csv(text),
            Format::Json => parse_json(text),
        };
        let built = Self::build(entries, prefixes);
        problems.extend(built.1);
        if problems.is_empty() {
            Ok(built.0)
        } else {
            problems.sort_by_key(|p| p.loc);
            Err(invalid(file, problems))
        }
    }

    /// Checks rows against each other and the prefixes: the inventory and its problems.
    pub fn build(entries: Vec<Entry>, prefixes: &[MonitoredPrefix]) -> (Self, Vec<Problem>) {
        let mut inv = Inventory::default();
        let mut problems = Vec::new();
        let mut by_key: HashMap<NodeKey, (Loc, String)> = HashMap::new();
        let mut by_name: BTreeMap<(u32, String), Loc> = BTreeMap::new();
        for e in entries {
            let loc = Some(e.loc);
            let key = NodeRef::new(e.vlan, e.addr, None).key();
            if let Some((first, name)) = by_key.get(&key) {
                problems.push(problem(
                    loc,
                    Some("address"),
                    format!("{} on VLAN {} is already {first} ({name})", e.addr, e.vlan),
                ));
                continue;
            }
            by_key.insert(key, (e.loc, e.name.clone()));
            let tenant = if prefixes.is_empty() {
                match e.tenant {
                    Some(t) => t,
                    None => {
                        problems.push(problem(
                            loc,
                            Some("tenant"),
                            "is required when no monitored prefixes are given",
                        ));
                        continue;
                    }
                }
            } else {
                match (longest_prefix(prefixes, e.vlan, e.addr), e.tenant) {
                    (None, _) => {
                        inv.warnings.push(format!(
                            "{}: {} ({} on VLAN {}) is in no monitored prefix; left out",
                            e.loc, e.name, e.addr, e.vlan
                        ));
                        continue;
                    }
                    (Some(p), Some(t)) if t != p.tenant => {
                        problems.push(problem(
                            loc,
                            Some("tenant"),
                            format!(
                                "{t} differs from tenant {} of its prefix {}/{} on VLAN {}: a node's tenant comes from its prefix",
                                p.tenant, p.addr, p.len, p.vlan
                            ),
                        ));
                        continue;
                    }
                    (Some(p), _) => p.tenant,
                }
            };
            if let Some(first) = by_name.insert((tenant, e.name.clone()), e.loc) {
                problems.push(problem(
                    loc,
                    Some("name"),
                    format!("{:?} is already {first} in tenant {tenant}", e.name),
                ));
                by_name.insert((tenant, e.name.clone()), first);
                continue;
            }
            inv.nodes.insert(
                key,
                NodeInfo {
                    name: e.name,
                    group: e.group,
                    tenant: TenantId(tenant),
                },
            );
        }
        (inv, problems)
    }

    pub fn get(&self, key: &NodeKey) -> Option<&NodeInfo> {
        self.nodes.get(key)
    }

    /// The node as records name it: with its inventory name when known.
    pub fn node_ref(&self, key: &NodeKey) -> NodeRef {
        NodeRef::from_key(key, self.get(key).map(|n| n.name.clone()))
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeKey, &NodeInfo)> {
        self.nodes.iter()
    }

    /// Nodes left out, and why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Inventory nodes per tenant, sorted by tenant.
    pub fn nodes_per_tenant(&self) -> Vec<(TenantId, u32)> {
        let mut m: BTreeMap<TenantId, u32> = BTreeMap::new();
        for n in self.nodes.values() {
            *m.entry(n.tenant).or_default() += 1;
        }
        m.into_iter().collect()
    }
}

/// The prefix the kernel would use for this node: same VLAN, holds the address, longest.
fn longest_prefix(
    prefixes: &[MonitoredPrefix],
    vlan: u16,
    addr: IpAddr,
) -> Option<&MonitoredPrefix> {
    prefixes
        .iter()
        .filter(|p| p.vlan == vlan && contains(p.addr, p.len, addr))
        .max_by_key(|p| p.len)
}

fn contains(net: IpAddr, len: u8, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(n) & m == u32::from(a) & m
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(n) & m == u128::from(a) & m
        }
        _ => false,
    }
}

// ---- fields ----

fn text_field(loc: Loc, field: &str, v: &str, problems: &mut Vec<Problem>) -> Option<String> {
    if v.len() > 255 {
        problems.push(problem(
            Some(loc),
            Some(field),
            format!("is {} bytes, at most 255", v.len()),
        ));
        None
    } else if v.chars().any(char::is_control) {
        problems.push(problem(
            Some(loc),
            Some(field),
            "contains a control character",
        ));
        None
    } else {
        Some(v.to_string())
    }
}

/// The fields of one row as text (CSV) or loosely typed (JSON), checked into an [`Entry`].
struct RawRow<'a> {
    loc: Loc,
    name: &'a str,
    address: &'a str,
    vlan: Option<i64>,
    vlan_text: Option<&'a str>,
    tenant: Option<i64>,
    tenant_text: Option<&'a str>,
    group: Option<&'a str>,
}

/// The accepted range of an integer field.
struct IntRange {
    min: i64,
    max: i64,
    what: &'static str,
}

/// An integer field given as a number (JSON) or as text (CSV; empty is absent).
fn int_field(
    loc: Loc,
    field: &str,
    value: Option<i64>,
    text: Option<&str>,
    range: IntRange,
    problems: &mut Vec<Problem>,
) -> Result<Option<i64>, ()> {
    let v = match (value, text) {
        (Some(v), _) => v,
        (None, None | Some("")) => return Ok(None),
        (None, Some(t)) => match t.parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                problems.push(problem(
                    Some(loc),
                    Some(field),
                    format!("{t:?} is not a number"),
                ));
                return Err(());
            }
        },
    };
    let IntRange { min, max, what } = range;
    if (min..=max).contains(&v) {
        Ok(Some(v))
    } else {
        problems.push(problem(
            Some(loc),
            Some(field),
            format!("{v} is not a {what}: use {min}-{max}"),
        ));
        Err(())
    }
}

fn check_row(r: RawRow<'_>, problems: &mut Vec<Problem>) -> Option<Entry> {
    let before = problems.len();
    let loc = r.loc;
    let name = r.name.trim();
    if name.is_empty() {
        problems.push(problem(Some(loc), Some("name"), "is empty"));
    }
    let name = text_field(loc, "name", name, problems);
    let address = r.address.trim();
    let addr = match address.parse::<IpAddr>() {
        // One spelling per node: an IPv4-mapped IPv6 address is the IPv4 node.
        Ok(IpAddr::V6(v6)) => Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)),
        Ok(a) => Some(a),
        Err(_) if address.is_empty() => {
            problems.push(problem(Some(loc), Some("address"), "is empty"));
            None
        }
        Err(_) => {
            let hint = if address.contains('/') {
                " (one node per row, not a prefix)"
            } else {
                ""
            };
            problems.push(problem(
                Some(loc),
                Some("address"),
                format!("{address:?} is not an IP address{hint}"),
            ));
            None
        }
    };
    let vlan = int_field(
        loc,
        "vlan",
        r.vlan,
        r.vlan_text.map(str::trim),
        IntRange {
            min: 0,
            max: 4094,
            what: "VLAN id",
        },
        problems,
    );
    let tenant = int_field(
        loc,
        "tenant",
        r.tenant,
        r.tenant_text.map(str::trim),
        IntRange {
            min: 1,
            max: i64::from(u32::MAX),
            what: "tenant (0 is reserved)",
        },
        problems,
    );
    let group = match r.group.map(str::trim) {
        None | Some("") => None,
        Some(g) => text_field(loc, "group", g, problems),
    };
    if problems.len() != before {
        return None;
    }
    Some(Entry {
        loc,
        name: name?,
        addr: addr?,
        vlan: vlan.ok()?.unwrap_or(0) as u16,
        tenant: tenant.ok()?.map(|t| t as u32),
        group,
    })
}

// ---- CSV ----

const COLUMNS: [&str; 5] = ["name", "address", "vlan", "tenant", "group"];

/// Rows of a CSV inventory and the problems found in them. A header line is required;
/// columns may come in any order; `#` starts a comment line.
pub fn parse_csv(text: &str) -> (Vec<Entry>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = match rdr.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            problems.push(problem(None, None, format!("cannot read the header: {e}")));
            return (entries, problems);
        }
    };
    let mut col: HashMap<&str, usize> = HashMap::new();
    for (i, h) in headers.iter().enumerate() {
        let h_lower = h.to_ascii_lowercase();
        match COLUMNS.iter().find(|c| **c == h_lower) {
            Some(c) => {
                if col.insert(c, i).is_some() {
                    problems.push(problem(
                        Some(Loc::Line(1)),
                        None,
                        format!("column {c:?} appears twice in the header"),
                    ));
                }
            }
            None => problems.push(problem(
                Some(Loc::Line(1)),
                None,
                format!(
                    "unknown column {h:?} in the header (columns: {})",
                    COLUMNS.join(", ")
                ),
            )),
        }
    }
    for required in ["name", "address"] {
        if !col.contains_key(required) {
            problems.push(problem(
                Some(Loc::Line(1)),
                None,
                format!(
                    "the header has no {required:?} column (the first line must name the columns: {})",
                    COLUMNS.join(", ")
                ),
            ));
        }
    }
    if !problems.is_empty() {
        return (entries, problems);
    }
    for rec in rdr.records() {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let loc = e.position().map(|p| Loc::Line(p.line()));
                let msg = match e.kind() {
                    csv::ErrorKind::UnequalLengths {
                        expected_len, len, ..
                    } => format!("{len} fields, the header has {expected_len}"),
                    csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
                    _ => e.to_string(),
                };
                problems.push(problem(loc, None, msg));
                continue;
            }
        };
        let line = rec.position().map_or(0, |p| p.line());
        let get = |c: &str| col.get(c).and_then(|&i| rec.get(i));
        let row = RawRow {
            loc: Loc::Line(line),
            name: get("name").unwrap_or(""),
            address: get("address").unwrap_or(""),
            vlan: None,
            vlan_text: get("vlan"),
            tenant: None,
            tenant_text: get("tenant"),
            group: get("group"),
        };
        if let Some(e) = check_row(row, &mut problems) {
            entries.push(e);
        }
    }
    (entries, problems)
}

// ---- JSON ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonNode {
    name: String,
    address: String,
    #[serde(default)]
    vlan: Option<i64>,
    #[serde(default)]
    tenant: Option<i64>,
    #[serde(default)]
    group: Option<String>,
}

/// Rows of a JSON inventory (an array of objects) and the problems found in them.
pub fn parse_json(text: &str) -> (Vec<Entry>, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = serde_path_to_error::deserialize::<_, Vec<JsonNode>>(&mut de)
        .map_err(|e| {
            let path = e.path().to_string();
            (path, e.into_inner())
        })
        .and_then(|v| de.end().map(|()| v).map_err(|e| (".".to_string(), e)));
    let nodes = match parsed {
        Ok(n) => n,
        Err((path, inner)) => {
            let at = format!("line {}, column {}", inner.line(), inner.column());
            let msg = inner.to_string();
            // serde_json appends " at line L column C"; say it once, our way.
            let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
            let field = (path != ".").then_some(path);
            problems.push(Problem {
                loc: None,
                field,
                message: format!("{msg} ({at})"),
            });
            return (Vec::new(), problems);
        }
    };
    let mut entries = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let row = RawRow {
            loc: Loc::Index(i),
            name: &n.name,
            address: &n.address,
            vlan: n.vlan,
            vlan_text: None,
            tenant: n.tenant,
            tenant_text: None,
            group: n.group.as_deref(),
        };
        if let Some(e) = check_row(row, &mut problems) {
            entries.push(e);
        }
    }
    (entries, problems)
}
