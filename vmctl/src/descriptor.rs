//! Application descriptors: the TOML a user writes (DESIGN.md, "An
//! application"), parsed and validated into an [`AppSpec`]. Every error
//! names the line and the field, so a bad descriptor is fixed at once.

use crate::units::{parse_bw_mbit, parse_mem_mib};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use toml::Spanned;

/// A descriptor error: where, which field, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, field `{field}`: {message}")]
pub struct DescriptorError {
    /// 1-based line of the offending value (0: not known).
    pub line: usize,
    /// The field's dotted path, e.g. `components.db.mem`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// How an application's components are spread over nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// As few nodes as possible (fill the fullest node that fits).
    Pack,
    /// As many nodes as possible (the emptiest node that fits).
    #[default]
    Spread,
}

/// A validated application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppSpec {
    /// Its name (also the directory /gvs/apps/NAME).
    pub name: String,
    /// Placement policy.
    pub placement: Placement,
    /// Its components, by name.
    pub components: BTreeMap<String, ComponentSpec>,
    /// Declared connections between terminals.
    pub connections: Vec<ConnectionSpec>,
}

/// One component (one VM, an "appliance").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentSpec {
    /// Its template directory (`/gvs/catalog/NAME`): volumes, kernel, image.toml.
    pub image: String,
    /// Guaranteed vCPUs (reserved on the node).
    pub cpu_min: u32,
    /// vCPUs the guest sees; the cap of its CPU use.
    pub cpu_max: u32,
    /// Memory in MiB (reserved, and the VM's limit).
    pub mem_mib: u64,
    /// Guaranteed bandwidth, Mbit/s (0: none asked).
    pub bw_min: u64,
    /// Bandwidth cap, Mbit/s (0: none).
    pub bw_max: u64,
    /// Volume file names to clone from the image (None: every `*.vol`).
    pub volumes: Option<Vec<String>>,
    /// Input terminals: name -> "tcp/80".
    pub inputs: BTreeMap<String, String>,
    /// Output terminals.
    pub outputs: Vec<String>,
    /// Components of the same application this one must not share a node with.
    pub anti_affinity: Vec<String>,
    /// Dedicated physical CPUs for its vCPUs.
    pub pin: bool,
    /// Backend: "qemu" (default) or "xen".
    pub hypervisor: String,
    /// AppLogic-style properties: settings the guest reads from its kernel
    /// command line as `vmctl.NAME=VALUE` (see [`check_property`]).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// A declared connection from an output terminal to an input terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionSpec {
    /// `component.output`.
    pub from: String,
    /// `component.input`.
    pub to: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: Spanned<String>,
    placement: Option<Spanned<String>>,
    components: Spanned<BTreeMap<String, Spanned<RawComponent>>>,
    #[serde(default)]
    connections: Vec<Spanned<RawConnection>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    image: Spanned<String>,
    cpu: Option<Spanned<toml::Value>>,
    mem: Spanned<String>,
    bw: Option<Spanned<toml::Value>>,
    volumes: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    inputs: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    outputs: Vec<Spanned<String>>,
    #[serde(default)]
    anti_affinity: Vec<Spanned<String>>,
    #[serde(default)]
    pin: bool,
    hypervisor: Option<Spanned<String>>,
    #[serde(default)]
    properties: BTreeMap<String, Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    from: Spanned<String>,
    to: Spanned<String>,
}

/// The 1-based line of byte `offset` in `src`.
pub fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())].matches('\n').count() + 1
}

/// Best-effort dotted path of the key whose value is at `offset`: the last
/// table header above it and the keys written on its line before it.
fn field_at(src: &str, offset: usize) -> String {
    let offset = offset.min(src.len());
    let start = src[..offset].rfind('\n').map_or(0, |i| i + 1);
    let before = &src[start..offset];
    let mut header = String::new();
    for l in src[..start].lines().rev() {
        let l = l.trim();
        if l.starts_with('[') {
            header = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            break;
        }
    }
    let mut keys: Vec<String> = before
        .split('=')
        .rev()
        .skip(1)
        .map(|p| {
            p.rsplit(['{', ',', ' ', '\t'])
                .find(|w| !w.is_empty())
                .unwrap_or("")
                .trim_matches('"')
                .to_string()
        })
        .filter(|k| !k.is_empty())
        .collect();
    keys.reverse();
    if before.trim_start().starts_with('[') {
        keys.clear();
    }
    let mut path: Vec<String> = Vec::new();
    if !header.is_empty() {
        path.push(header);
    }
    path.extend(keys);
    if path.is_empty() {
        "-".into()
    } else {
        path.join(".")
    }
}

struct Ctx<'a> {
    src: &'a str,
}

impl Ctx<'_> {
    fn err(
        &self,
        span: Range<usize>,
        field: impl Into<String>,
        msg: impl Into<String>,
    ) -> DescriptorError {
        DescriptorError {
            line: line_of(self.src, span.start),
            field: field.into(),
            message: msg.into(),
        }
    }
}

/// Checks a name of an application, component or terminal: lowercase
/// letters, digits and '-', starting with a letter, at most 32 characters
/// (it becomes part of VM names, paths and keys).
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a valid name (lowercase letters, digits and '-', starting with a letter, at most 32)"
        ))
    }
}

/// Properties vmctl sets itself on a guest's command line.
pub const RESERVED_PROPERTIES: &[&str] = &["name", "node", "ip", "gw", "dns"];
/// The longest property value: a kernel command line is 2 KiB in all.
pub const MAX_PROPERTY_LEN: usize = 128;

/// Checks a component property: its name is a [`check_name`] name (with
/// '_' allowed) that vmctl does not set itself; its value is 1 to
/// [`MAX_PROPERTY_LEN`] printable ASCII characters without spaces or
/// quotes, so that `vmctl.NAME=VALUE` is one kernel command-line word.
pub fn check_property(name: &str, value: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !name_ok {
        return Err(format!(
            "{name:?} is not a valid property name (lowercase letters, digits, '-' and '_', starting with a letter, at most 32)"
        ));
    }
    if RESERVED_PROPERTIES.contains(&name) {
        return Err(format!("{name:?} is set by vmctl itself"));
    }
    if value.is_empty() || value.len() > MAX_PROPERTY_LEN {
        return Err(format!(
            "the value must be 1 to {MAX_PROPERTY_LEN} characters"
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '"' | '\'' | '\\'))
    {
        return Err(format!(
            "{value:?}: {c:?} is not allowed (one word of printable ASCII, no quotes)"
        ));
    }
    Ok(())
}

fn check_terminal_kind(s: &str) -> Result<(), String> {
    let (proto, port) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not PROTO/PORT (e.g. \"tcp/80\")"))?;
    if !matches!(proto, "tcp" | "udp") {
        return Err(format!("{s:?}: protocol must be tcp or udp"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{s:?}: port must be 1..=65535")),
    }
}

/// Parses and validates a descriptor.
pub fn parse(src: &str) -> Result<AppSpec, DescriptorError> {
    let raw: RawApp = toml::from_str(src).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        let msg = e.message().trim().to_string();
        // serde names the field in "unknown field `x`" and "missing field `x`".
        let named = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field `"))
            .map(str::to_string);
        let mut field = field_at(src, span.start);
        if let Some(n) = named {
            if msg.starts_with("missing") {
                // The span is the table missing it.
                let line = src[span.start.min(src.len())..]
                    .lines()
                    .next()
                    .unwrap_or("");
                let table = line.trim().trim_matches(|c| c == '[' || c == ']').trim();
                field = if line.trim_start().starts_with('[') && !table.is_empty() {
                    format!("{table}.{n}")
                } else {
                    n
                };
            } else if !field.ends_with(&n) {
                let header = field.rsplit_once('.').map(|(h, _)| h.to_string());
                field = match header {
                    Some(h) if field != "-" => format!("{h}.{n}"),
                    _ => n,
                };
            }
        }
        DescriptorError {
            line: if span.is_empty() && span.start == 0 {
                0
            } else {
                line_of(src, span.start)
            },
            field,
            message: msg,
        }
    })?;
    let cx = Ctx { src };
    check_name(raw.name.get_ref()).map_err(|m| cx.err(raw.name.span(), "name", m))?;
    let placement = match &raw.placement {
        None => Placement::Spread,
        Some(p) => match p.get_ref().as_str() {
            "pack" => Placement::Pack,
            "spread" => Placement::Spread,
            other => {
                return Err(cx.err(
                    p.span(),
                    "placement",
                    format!("{other:?} is not a placement (\"pack\" or \"spread\")"),
                ))
            }
        },
    };
    if raw.components.get_ref().is_empty() {
        return Err(cx.err(
            raw.components.span(),
            "components",
            "an application needs at least one component",
        ));
    }
    let names: BTreeSet<&str> = raw
        .components
        .get_ref()
        .keys()
        .map(String::as_str)
        .collect();
    let mut components = BTreeMap::new();
    for (cname, rc) in raw.components.get_ref() {
        let f = |k: &str| format!("components.{cname}.{k}");
        let rc_span = rc.span();
        let rc = rc.get_ref();
        check_name(cname).map_err(|m| cx.err(rc_span.clone(), format!("components.{cname}"), m))?;
        let image = rc.image.get_ref().clone();
        if !image.starts_with('/') {
            return Err(cx.err(
                rc.image.span(),
                f("image"),
                format!("{image:?} must be an absolute path (e.g. \"/gvs/catalog/web\")"),
            ));
        }
        let (cpu_min, cpu_max) = match &rc.cpu {
            None => (1, 1),
            Some(v) => cpu_range(&cx, v, &f("cpu"))?,
        };
        let mem_mib =
            parse_mem_mib(rc.mem.get_ref()).map_err(|m| cx.err(rc.mem.span(), f("mem"), m))?;
        if mem_mib < 32 {
            return Err(cx.err(
                rc.mem.span(),
                f("mem"),
                format!("{} is too small: a VM needs at least 32M", rc.mem.get_ref()),
            ));
        }
        let (bw_min, bw_max) = match &rc.bw {
            None => (0, 0),
            Some(v) => bw_range(&cx, v, &f("bw"))?,
        };
        let volumes = match &rc.volumes {
            None => None,
            Some(v) => {
                for name in v.get_ref() {
                    if name.is_empty() || name.contains('/') || name.starts_with('.') {
                        return Err(cx.err(
                            v.span(),
                            f("volumes"),
                            format!("{name:?} must be a file name in the image directory"),
                        ));
                    }
                }
                Some(v.get_ref().clone())
            }
        };
        let mut inputs = BTreeMap::new();
        for (t, kind) in &rc.inputs {
            check_name(t).map_err(|m| cx.err(kind.span(), f(&format!("inputs.{t}")), m))?;
            check_terminal_kind(kind.get_ref())
                .map_err(|m| cx.err(kind.span(), f(&format!("inputs.{t}")), m))?;
            inputs.insert(t.clone(), kind.get_ref().clone());
        }
        let mut outputs = Vec::new();
        for o in &rc.outputs {
            check_name(o.get_ref()).map_err(|m| cx.err(o.span(), f("outputs"), m))?;
            if inputs.contains_key(o.get_ref()) || outputs.contains(o.get_ref()) {
                return Err(cx.err(
                    o.span(),
                    f("outputs"),
                    format!("terminal {:?} is declared twice", o.get_ref()),
                ));
            }
            outputs.push(o.get_ref().clone());
        }
        let mut anti = Vec::new();
        for a in &rc.anti_affinity {
            let n = a.get_ref();
            if n == cname {
                return Err(cx.err(
                    a.span(),
                    f("anti_affinity"),
                    format!("{cname} cannot be anti-affine to itself"),
                ));
            }
            if !names.contains(n.as_str()) {
                return Err(cx.err(
                    a.span(),
                    f("anti_affinity"),
                    format!("no component named {n:?} in this application"),
                ));
            }
            anti.push(n.clone());
        }
        let hypervisor = match &rc.hypervisor {
            None => "qemu".to_string(),
            Some(h) if matches!(h.get_ref().as_str(), "qemu" | "xen") => h.get_ref().clone(),
            Some(h) => {
                return Err(cx.err(
                    h.span(),
                    f("hypervisor"),
                    format!("{:?} is not a backend (\"qemu\" or \"xen\")", h.get_ref()),
                ))
            }
        };
        let mut properties = BTreeMap::new();
        for (k, v) in &rc.properties {
            check_property(k, v.get_ref())
                .map_err(|m| cx.err(v.span(), f(&format!("properties.{k}")), m))?;
            properties.insert(k.clone(), v.get_ref().clone());
        }
        components.insert(
            cname.clone(),
            ComponentSpec {
                image,
                cpu_min,
                cpu_max,
                mem_mib,
                bw_min,
                bw_max,
                volumes,
                inputs,
                outputs,
                anti_affinity: anti,
                pin: rc.pin,
                hypervisor,
                properties,
            },
        );
    }
    let mut connections = Vec::new();
    for (i, c) in raw.connections.iter().enumerate() {
        let c = c.get_ref();
        let (from_c, from_t) = terminal(
            &cx,
            &c.from,
            &format!("connections[{i}].from"),
            &components,
            true,
        )?;
        let (to_c, to_t) = terminal(
            &cx,
            &c.to,
            &format!("connections[{i}].to"),
            &components,
            false,
        )?;
        connections.push(ConnectionSpec {
            from: format!("{from_c}.{from_t}"),
            to: format!("{to_c}.{to_t}"),
        });
    }
    Ok(AppSpec {
        name: raw.name.into_inner(),
        placement,
        components,
        connections,
    })
}

fn terminal(
    cx: &Ctx,
    s: &Spanned<String>,
    field: &str,
    comps: &BTreeMap<String, ComponentSpec>,
    output: bool,
) -> Result<(String, String), DescriptorError> {
    let v = s.get_ref();
    let (c, t) = v
        .split_once('.')
        .ok_or_else(|| cx.err(s.span(), field, format!("{v:?} is not COMPONENT.TERMINAL")))?;
    let comp = comps
        .get(c)
        .ok_or_else(|| cx.err(s.span(), field, format!("no component named {c:?}")))?;
    let ok = if output {
        comp.outputs.iter().any(|o| o == t)
    } else {
        comp.inputs.contains_key(t)
    };
    if !ok {
        let kind = if output { "output" } else { "input" };
        return Err(cx.err(s.span(), field, format!("{c} has no {kind} terminal {t:?}")));
    }
    Ok((c.to_string(), t.to_string()))
}

fn int(cx: &Ctx, v: &toml::Value, span: Range<usize>, field: &str) -> Result<u32, DescriptorError> {
    match v.as_integer() {
        Some(n) if (1..=256).contains(&n) => Ok(n as u32),
        Some(n) => Err(cx.err(span, field, format!("{n} must be 1..=256"))),
        None => Err(cx.err(span, field, format!("{v} is not a number of CPUs"))),
    }
}

fn cpu_range(
    cx: &Ctx,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Result<(u32, u32), DescriptorError> {
    let span = v.span();
    match v.get_ref() {
        toml::Value::Table(t) => {
            for k in t.keys() {
                if k != "min" && k != "max" {
                    return Err(cx.err(
                        span,
                        format!("{field}.{k}"),
                        "unknown field (cpu takes min and max)",
                    ));
                }
            }
            let min = match t.get("min") {
                Some(m) => int(cx, m, span.clone(), &format!("{field}.min"))?,
                None => {
                    return Err(cx.err(
                        span,
                        format!("{field}.min"),
                        "missing (e.g. cpu = { min = 1, max = 2 })",
                    ))
                }
            };
            let max = match t.get("max") {
                Some(m) => int(cx, m, span.clone(), &format!("{field}.max"))?,
                None => min,
            };
            if max < min {
                return Err(cx.err(
                    span,
                    format!("{field}.max"),
                    format!("max {max} is less than min {min}"),
                ));
            }
            Ok((min, max))
        }
        other => {
            let n = int(cx, other, span, field)?;
            Ok((n, n))
        }
    }
}

fn bw_range(
    cx: &Ctx,
    v: &Spanned<toml::Value>,
    field: &str,
) -> Result<(u64, u64), DescriptorError> {
    let span = v.span();
    let one = |val: &toml::Value, f: &str| -> Result<u64, DescriptorError> {
        match val.as_str() {
            Some(s) => parse_bw_mbit(s).map_err(|m| cx.err(span.clone(), f, m)),
            None => Err(cx.err(
                span.clone(),
                f,
                format!("{val} is not a bandwidth (write e.g. \"50M\")"),
            )),
        }
    };
    match v.get_ref() {
        toml::Value::Table(t) => {
            for k in t.keys() {
                if k != "min" && k != "max" {
                    return Err(cx.err(
                        span.clone(),
                        format!("{field}.{k}"),
                        "unknown field (bw takes min and max)",
                    ));
                }
            }
            let min = t
                .get("min")
                .map(|m| one(m, &format!("{field}.min")))
                .transpose()?
                .unwrap_or(0);
            let max = t
                .get("max")
                .map(|m| one(m, &format!("{field}.max")))
                .transpose()?
                .unwrap_or(0);
            if max != 0 && max < min {
                return Err(cx.err(span, format!("{field}.max"), "max is less than min"));
            }
            Ok((min, max))
        }
        other => {
            let n = one(other, field)?;
            Ok((n, n))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHOP: &str = r#"name = "shop"
placement = "spread"                 # or "pack"

[components.web]
image = "/gvs/catalog/web"           # template volumes, cloned per instance
cpu = { min = 1, max = 2 }
mem = "256M"
bw = { min = "50M", max = "200M" }
inputs = { http = "tcp/80" }
outputs = ["db"]

[components.db]
image = "/gvs/catalog/db"
cpu = { min = 1 }
mem = "512M"
inputs = { sql = "tcp/3306" }
anti_affinity = ["web"]

[[connections]]
from = "web.db"                      # output terminal
to = "db.sql"                        # input terminal
"#;

    #[test]
    fn design_example_parses() {
        let a = parse(SHOP).unwrap();
        assert_eq!(a.name, "shop");
        assert_eq!(a.placement, Placement::Spread);
        let web = &a.components["web"];
        assert_eq!((web.cpu_min, web.cpu_max, web.mem_mib), (1, 2, 256));
        assert_eq!((web.bw_min, web.bw_max), (50, 200));
        let db = &a.components["db"];
        assert_eq!((db.cpu_min, db.cpu_max, db.mem_mib), (1, 1, 512));
        assert_eq!(db.anti_affinity, vec!["web"]);
        assert_eq!(a.connections[0].from, "web.db");
    }

    fn err(src: &str) -> DescriptorError {
        parse(src).unwrap_err()
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = err(&SHOP.replace("mem = \"512M\"", "mem = \"512X\""));
        assert_eq!((e.line, e.field.as_str()), (15, "components.db.mem"), "{e}");
        assert!(
            e.to_string()
                .starts_with("line 15, field `components.db.mem`:"),
            "{e}"
        );

        let e = err(&SHOP.replace("anti_affinity = [\"web\"]", "anti_affinity = [\"cache\"]"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (17, "components.db.anti_affinity"),
            "{e}"
        );
        assert!(e.message.contains("cache"));

        let e = err(&SHOP.replace("cpu = { min = 1, max = 2 }", "cpu = { min = 3, max = 2 }"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (6, "components.web.cpu.max"),
            "{e}"
        );

        let e = err(&SHOP.replace("placement = \"spread\"", "placement = \"random\""));
        assert_eq!((e.line, e.field.as_str()), (2, "placement"), "{e}");

        let e = err(&SHOP.replace("to = \"db.sql\"", "to = \"db.http\""));
        assert_eq!((e.line, e.field.as_str()), (21, "connections[0].to"), "{e}");

        let e = err(&SHOP.replace(
            "inputs = { http = \"tcp/80\" }",
            "inputs = { http = \"icmp/1\" }",
        ));
        assert_eq!(
            (e.line, e.field.as_str()),
            (9, "components.web.inputs.http"),
            "{e}"
        );
    }

    #[test]
    fn toml_level_errors_name_line_and_field() {
        // A type error: the field is found from the text.
        let e = err(&SHOP.replace("mem = \"256M\"", "mem = 256"));
        assert_eq!((e.line, e.field.as_str()), (7, "components.web.mem"), "{e}");
        // An unknown field.
        let e = err(&SHOP.replace("mem = \"256M\"", "mem = \"256M\"\nmemory = \"1G\""));
        assert_eq!(e.line, 8, "{e}");
        assert!(e.field.ends_with("memory"), "{e}");
        // A missing field.
        let e = err(&SHOP.replace("mem = \"512M\"\n", ""));
        assert!(e.field.ends_with("mem"), "{e}");
        assert!(e.line >= 12, "{e}");
        // Not TOML at all.
        let e = err("name = \"x\"\n[components.a\n");
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn properties_are_checked_with_line_and_field() {
        let with = |p: &str| {
            SHOP.replace(
                "outputs = [\"db\"]",
                &format!("outputs = [\"db\"]\nproperties = {p}"),
            )
        };
        let a = parse(&with("{ probe = \"db:80,db:8080\" }")).unwrap();
        assert_eq!(a.components["web"].properties["probe"], "db:80,db:8080");
        let e = err(&with("{ probe = \"db:80 db:8080\" }"));
        assert_eq!(
            (e.line, e.field.as_str()),
            (11, "components.web.properties.probe"),
            "{e}"
        );
        let e = err(&with("{ ip = \"10.0.0.1\" }"));
        assert_eq!(e.field, "components.web.properties.ip", "{e}");
        let e = err(&with(&format!("{{ probe = \"{}\" }}", "x".repeat(129))));
        assert!(e.message.contains("128"), "{e}");
        let e = err(&with("{ Probe = \"x\" }"));
        assert_eq!(e.field, "components.web.properties.Probe", "{e}");
        let e = err(&with("{ probe = 80 }"));
        assert_eq!(e.line, 11, "{e}");
    }

    #[test]
    fn bad_names_are_refused() {
        let e = err(&SHOP.replace("name = \"shop\"", "name = \"Shop!\""));
        assert_eq!((e.line, e.field.as_str()), (1, "name"));
        let e = err("name = \"x\"\n[components]\n");
        assert_eq!(e.field, "components");
    }
}
