//! Sluice's SQL dialect: DataFusion's parser (Postgres dialect), plus the
//! statements that are Sluice's own (`CREATE STREAM`, `DROP STREAM`,
//! `SHOW STREAMS`). Statements are split by DataFusion's parser loop; at
//! each statement start, Sluice looks at the first keywords and parses its
//! own statements itself.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::{ColumnDef, Expr as SqlExpr, ObjectName, Query, VisitMut, VisitorMut};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

use crate::error::{ErrorKind, Result, SluiceError};

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum Statement {
    /// Anything DataFusion parses.
    DataFusion(DFStatement),
    /// `CREATE STREAM [IF NOT EXISTS] name WITH (key = 'value', ...)`
    CreateStream(CreateStream),
    /// `DROP STREAM [IF EXISTS] name`
    DropStream { name: ObjectName, if_exists: bool },
    /// `SHOW STREAMS`
    ShowStreams,
    /// `CREATE SINK [IF NOT EXISTS] name WITH (...) AS query`
    CreateSink(CreateJob),
    /// `CREATE MATERIALIZED VIEW [IF NOT EXISTS] name AS query`
    CreateMaterializedView(CreateJob),
    /// `DROP SINK [IF EXISTS] name`
    DropSink { name: ObjectName, if_exists: bool },
    /// `ALTER SINK name SET (key = 'value', ...)`
    AlterSink {
        name: ObjectName,
        options: BTreeMap<String, String>,
    },
    /// `DROP MATERIALIZED VIEW [IF EXISTS] name`
    DropMaterializedView { name: ObjectName, if_exists: bool },
    /// `SHOW SINKS`
    ShowSinks,
    /// `SHOW MATERIALIZED VIEWS`
    ShowMaterializedViews,
    /// `SHOW JOBS`
    ShowJobs,
    /// `SHOW CHECKPOINTS`: recent checkpoints of every job.
    ShowCheckpoints,
    /// `CREATE SECRET [IF NOT EXISTS] name AS 'value'`, or `ALTER SECRET
    /// name AS 'value'` (`replace`).
    CreateSecret {
        name: ObjectName,
        if_not_exists: bool,
        replace: bool,
        value: String,
    },
    /// `DROP SECRET [IF EXISTS] name`
    DropSecret { name: ObjectName, if_exists: bool },
    /// `SHOW SECRETS`: names only.
    ShowSecrets,
    /// `EXPLAIN CREATE SINK ...` / `EXPLAIN CREATE MATERIALIZED VIEW ...`:
    /// the streaming plan.
    Explain(Box<Statement>),
    /// `SUBSCRIBE [TO] view | (query)`, or wrapped as
    /// `COPY (SUBSCRIBE ...) TO STDOUT` (`copy`), which psql prints as rows
    /// arrive.
    Subscribe { target: SubscribeTarget, copy: bool },
    /// `COPY (query) TO STDOUT [WITH (...)]` or `COPY table TO STDOUT`
    /// (`table` read as `SELECT * FROM table`): the rows in COPY's text or
    /// CSV format (psql's `\copy ... to`).
    CopyOut { query: Box<Query>, options: CopyOptions },
    /// `MOVE [direction] [FROM | IN] cursor`: FETCH without the rows.
    Move {
        name: datafusion::sql::sqlparser::ast::Ident,
        direction: datafusion::sql::sqlparser::ast::FetchDirection,
    },
    /// `COPY table [(column, ...)] FROM STDIN [WITH (...)]`: rows from the
    /// client in COPY's text or CSV format, appended to an external table
    /// (psql's `\copy ... from`).
    CopyIn {
        table: ObjectName,
        columns: Vec<String>,
        options: CopyOptions,
    },
}

/// The options of a `COPY ... TO STDOUT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// CSV (else COPY's text format: tab-separated, `\N` for NULL).
    pub csv: bool,
    /// A first line naming the columns (CSV only, as in Postgres).
    pub header: bool,
    pub delimiter: char,
    /// What a NULL is written as.
    pub null: String,
}

impl CopyOptions {
    /// COPY's text format: tab-separated, `\N` for NULL.
    pub fn text() -> Self {
        Self {
            csv: false,
            header: false,
            delimiter: '\t',
            null: "\\N".into(),
        }
    }
}

/// What `SUBSCRIBE` follows.
#[derive(Debug, Clone, PartialEq)]
pub enum SubscribeTarget {
    /// A materialized view: its current contents, then its changes.
    View(ObjectName),
    /// A query, run as a private job: its output as it is produced.
    Query(Box<Query>),
}

/// `CREATE SINK` or `CREATE MATERIALIZED VIEW`: a continuous query.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateJob {
    pub name: ObjectName,
    pub if_not_exists: bool,
    /// Sink options (empty for views).
    pub options: BTreeMap<String, String>,
    pub query: Box<Query>,
}

impl CreateJob {
    fn render(&self, what: &str, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CREATE {what} ")?;
        if self.if_not_exists {
            write!(f, "IF NOT EXISTS ")?;
        }
        write!(f, "{}", self.name)?;
        if !self.options.is_empty() {
            write!(f, " WITH ({})", render_options(&self.options))?;
        }
        write!(f, " AS {}", self.query)
    }
}

impl fmt::Display for Statement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Statement::DataFusion(s) => write!(f, "{s}"),
            Statement::CreateStream(c) => write!(f, "{c}"),
            Statement::CreateSink(c) => c.render("SINK", f),
            Statement::CreateMaterializedView(c) => c.render("MATERIALIZED VIEW", f),
            Statement::DropStream { name, .. } => write!(f, "DROP STREAM {name}"),
            Statement::DropSink { name, .. } => write!(f, "DROP SINK {name}"),
            Statement::AlterSink { name, options } => {
                write!(f, "ALTER SINK {name} SET ({})", render_options(options))
            }
            Statement::DropMaterializedView { name, .. } => write!(f, "DROP MATERIALIZED VIEW {name}"),
            Statement::ShowStreams => write!(f, "SHOW STREAMS"),
            Statement::ShowSinks => write!(f, "SHOW SINKS"),
            Statement::ShowMaterializedViews => write!(f, "SHOW MATERIALIZED VIEWS"),
            Statement::ShowJobs => write!(f, "SHOW JOBS"),
            // The value is never shown.
            Statement::CreateSecret { name, replace, .. } => {
                write!(
                    f,
                    "{} SECRET {name} AS '********'",
                    if *replace { "ALTER" } else { "CREATE" }
                )
            }
            Statement::DropSecret { name, .. } => write!(f, "DROP SECRET {name}"),
            Statement::ShowSecrets => write!(f, "SHOW SECRETS"),
            Statement::ShowCheckpoints => write!(f, "SHOW CHECKPOINTS"),
            Statement::Move { name, direction } => write!(f, "MOVE {direction} FROM {name}"),
            Statement::Explain(s) => write!(f, "EXPLAIN {s}"),
            Statement::CopyOut { query, .. } => write!(f, "COPY ({query}) TO STDOUT"),
            Statement::CopyIn { table, columns, .. } if columns.is_empty() => {
                write!(f, "COPY {table} FROM STDIN")
            }
            Statement::CopyIn { table, columns, .. } => {
                write!(f, "COPY {table} ({}) FROM STDIN", columns.join(", "))
            }
            Statement::Subscribe { target, copy } => {
                let t = match target {
                    SubscribeTarget::View(n) => n.to_string(),
                    SubscribeTarget::Query(q) => format!("({q})"),
                };
                if *copy {
                    write!(f, "COPY (SUBSCRIBE TO {t}) TO STDOUT")
                } else {
                    write!(f, "SUBSCRIBE TO {t}")
                }
            }
        }
    }
}

fn render_options(options: &BTreeMap<String, String>) -> String {
    options
        .iter()
        .map(|(k, v)| match crate::secrets::reference(v) {
            Some(name) => format!("{} = SECRET {name}", quote(k)),
            None => format!("{} = {}", quote(k), quote(v)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `CREATE STREAM`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStream {
    pub name: ObjectName,
    pub if_not_exists: bool,
    /// Option keys as written (quotes removed), lower-cased.
    pub options: BTreeMap<String, String>,
    /// `WATERMARK FOR column AS expr`: the event-time column and the
    /// watermark expression.
    pub watermark: Option<(String, Box<SqlExpr>)>,
    /// Declared columns (empty: the connector defines them).
    pub columns: Vec<ColumnDef>,
    /// Metadata columns (`col TYPE METADATA [FROM 'key'] [VIRTUAL]`, as in
    /// Flink): the column's name (normalized) -> the connector's metadata
    /// key (a Kafka record's partition, offset, key, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Object names are case-insensitive unless quoted, as in Postgres; the
/// catalog keys on the last part of the name.
pub(crate) fn normalize_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|ident| {
            if ident.quote_style.is_some() {
                ident.value.clone()
            } else {
                ident.value.to_ascii_lowercase()
            }
        })
        .unwrap_or_else(|| name.to_string())
}

/// A column name as the catalog keeps it: unquoted names lower-cased.
pub fn column_name(ident: &datafusion::sql::sqlparser::ast::Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_ascii_lowercase()
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl fmt::Display for CreateStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CREATE STREAM ")?;
        if self.if_not_exists {
            write!(f, "IF NOT EXISTS ")?;
        }
        write!(f, "{}", self.name)?;
        let mut parts: Vec<String> = self
            .columns
            .iter()
            .map(|c| match self.metadata.get(&column_name(&c.name)) {
                Some(key) => format!("{c} METADATA FROM {}", quote(key)),
                None => c.to_string(),
            })
            .collect();
        if let Some((col, expr)) = &self.watermark {
            parts.push(format!("WATERMARK FOR {col} AS {expr}"));
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        write!(f, " WITH ({})", render_options(&self.options))
    }
}

fn syntax(e: ParserError) -> SluiceError {
    SluiceError::from(DataFusionError::from(e))
}

fn peek_word(parser: &Parser, n: usize) -> Option<String> {
    match parser.peek_nth_token(n).token {
        Token::Word(w) => Some(w.value.to_ascii_uppercase()),
        _ => None,
    }
}

/// `name AS OF VERSION 12` / `name AS OF TIMESTAMP '2026-11-22 10:00:00'`
/// (time travel on a versioned sink's table) becomes the table function
/// call `sluice_as_of('name', ...) AS name`, which DataFusion plans. Text
/// without the pattern is returned as is.
pub fn rewrite_as_of(sql: &str) -> Result<std::borrow::Cow<'_, str>> {
    use datafusion::sql::sqlparser::keywords::RESERVED_FOR_TABLE_ALIAS;
    use datafusion::sql::sqlparser::tokenizer::{Location, Tokenizer};
    let mentions_of = sql
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .any(|w| w.eq_ignore_ascii_case("of"));
    if !mentions_of {
        return Ok(std::borrow::Cow::Borrowed(sql));
    }
    let dialect = PostgreSqlDialect {};
    let Ok(tokens) = Tokenizer::new(&dialect, sql).tokenize_with_location() else {
        // The parser reports the error.
        return Ok(std::borrow::Cow::Borrowed(sql));
    };
    // Byte offset of each line's start, to turn (line, column) into offsets.
    let mut line_starts = vec![0usize];
    line_starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
    let offset = |l: Location| -> usize {
        let start = line_starts
            .get(l.line.saturating_sub(1) as usize)
            .copied()
            .unwrap_or(sql.len());
        sql[start..]
            .char_indices()
            .nth(l.column.saturating_sub(1) as usize)
            .map_or(sql.len(), |(i, _)| start + i)
    };
    let sig: Vec<_> = tokens
        .iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let word = |i: usize| match sig.get(i).map(|t| &t.token) {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    };
    // Whether no alias follows the token at `at` (then the rewrite names
    // the call after the table).
    let no_alias_after = |at: usize| match sig.get(at + 1).map(|t| &t.token) {
        Some(Token::Word(w)) => w.keyword != Keyword::AS && RESERVED_FOR_TABLE_ALIAS.contains(&w.keyword),
        _ => true,
    };
    // The first token of the (maybe qualified, a.b.c) name ending at `at`.
    let name_start = |at: usize| {
        let mut first = at;
        while first >= 2 && matches!(sig[first - 1].token, Token::Period) && word(first - 2).is_some() {
            first -= 2;
        }
        first
    };
    let mut edits: Vec<(usize, usize, String)> = vec![];
    for i in 1..sig.len() {
        let (Some(a), Some(o), Some(kind)) = (word(i), word(i + 1), word(i + 2)) else {
            continue;
        };
        if a.keyword != Keyword::AS || o.keyword != Keyword::OF {
            continue;
        }
        // `name FOR SYSTEM_TIME AS OF ...`: the name is before FOR.
        let system_time = i >= 3
            && word(i - 1)
                .is_some_and(|w| w.quote_style.is_none() && w.value.eq_ignore_ascii_case("system_time"))
            && word(i - 2).is_some_and(|w| w.keyword == Keyword::FOR);
        let name_at = if system_time { i - 3 } else { i - 1 };
        if system_time && !(kind.keyword == Keyword::TIMESTAMP && kind.quote_style.is_none()) {
            // A temporal join: `versioned FOR SYSTEM_TIME AS OF probe.t`.
            let ident = |w: &datafusion::sql::sqlparser::tokenizer::Word| match w.quote_style {
                Some(_) => w.value.clone(),
                None => w.value.to_ascii_lowercase(),
            };
            let mut parts = vec![ident(kind)];
            let mut last = i + 2;
            // PROCTIME(): processing time (no column).
            let proctime = kind.quote_style.is_none()
                && kind.value.eq_ignore_ascii_case("proctime")
                && matches!(sig.get(i + 3).map(|t| &t.token), Some(Token::LParen))
                && matches!(sig.get(i + 4).map(|t| &t.token), Some(Token::RParen));
            if proctime {
                parts.clear();
                last = i + 4;
            }
            while !proctime
                && matches!(sig.get(last + 1).map(|t| &t.token), Some(Token::Period))
                && let Some(w) = word(last + 2)
            {
                parts.push(ident(w));
                last += 2;
            }
            if parts.len() > 2 {
                return Err(SluiceError::new(
                    ErrorKind::Syntax,
                    "syntax error: write versioned FOR SYSTEM_TIME AS OF probe.time_column",
                ));
            }
            let Some(table) = word(name_at) else {
                continue;
            };
            let first = name_start(name_at);
            let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
            let column = parts.pop().map_or("NULL".to_string(), |c| quote(&c));
            let mut replacement = format!("{VERSIONS}({}, {column}", quote(&ident(table)));
            if let Some(q) = parts.pop() {
                replacement.push_str(&format!(", {}", quote(&q)));
            }
            replacement.push(')');
            if no_alias_after(last) {
                replacement.push_str(" AS ");
                replacement.push_str(&sql[offset(sig[name_at].span.start)..offset(sig[name_at].span.end)]);
            }
            edits.push((
                offset(sig[first].span.start),
                offset(sig[last].span.end),
                replacement,
            ));
            continue;
        }
        let Some(value) = sig.get(i + 3) else {
            continue;
        };
        match (kind.keyword, &value.token) {
            (Keyword::VERSION, Token::Number(..)) | (Keyword::TIMESTAMP, Token::SingleQuotedString(_)) => {}
            (Keyword::VERSION | Keyword::TIMESTAMP, _) => {
                return Err(SluiceError::new(
                    ErrorKind::Syntax,
                    "syntax error: write AS OF VERSION <number> or AS OF TIMESTAMP '<time>'",
                ));
            }
            _ => continue,
        }
        // The table name before AS (or FOR SYSTEM_TIME AS): a word,
        // possibly qualified (a.b.c).
        let Some(last) = word(name_at) else {
            continue;
        };
        let first = name_start(name_at);
        let name = match last.quote_style {
            Some(_) => last.value.clone(),
            None => last.value.to_ascii_lowercase(),
        };
        let start = offset(sig[first].span.start);
        let end = offset(value.span.end);
        let value_text = &sql[offset(value.span.start)..end];
        let mut replacement = format!("{AS_OF}('{}', {value_text})", name.replace('\'', "''"));
        if no_alias_after(i + 3) {
            replacement.push_str(" AS ");
            replacement.push_str(&sql[offset(sig[name_at].span.start)..offset(sig[name_at].span.end)]);
        }
        edits.push((start, end, replacement));
    }
    if edits.is_empty() {
        return Ok(std::borrow::Cow::Borrowed(sql));
    }
    let mut out = sql.to_string();
    for (start, end, replacement) in edits.into_iter().rev() {
        out.replace_range(start..end, &replacement);
    }
    Ok(std::borrow::Cow::Owned(out))
}

const AS_OF: &str = crate::versions::AS_OF_FUNCTION;
const VERSIONS: &str = crate::streaming::versioned::VERSIONS_FUNCTION;

/// `OPTIONS ('s3.secret_access_key' SECRET name, ...)` in `CREATE EXTERNAL
/// TABLE`: DataFusion's parser takes one literal per option value, so a
/// `SECRET name` value becomes one string token holding the reference
/// (see [`crate::secrets::make_reference`]), resolved when the table is
/// created. None when the text has no such value (it is parsed as is).
fn secret_option_tokens(
    sql: &str,
    dialect: &PostgreSqlDialect,
) -> Option<Vec<datafusion::sql::sqlparser::tokenizer::TokenWithSpan>> {
    use datafusion::sql::sqlparser::tokenizer::Tokenizer;
    if !sql
        .as_bytes()
        .windows(6)
        .any(|w| w.eq_ignore_ascii_case(b"secret"))
    {
        return None;
    }
    let mut tokens = Tokenizer::new(dialect, sql).tokenize_with_location().ok()?;
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i].token, Token::Whitespace(_)))
        .collect();
    let tok = |k: usize| sig.get(k).map(|&i| &tokens[i].token);
    // (index of SECRET, index of the name, the name)
    let mut refs: Vec<(usize, usize, String)> = vec![];
    // Parenthesis depth inside an OPTIONS list (0: outside one).
    let mut depth = 0usize;
    for k in 0..sig.len() {
        match tok(k) {
            Some(Token::LParen) if depth > 0 => depth += 1,
            Some(Token::LParen) => {
                if matches!(k.checked_sub(1).and_then(&tok), Some(Token::Word(w)) if w.keyword == Keyword::OPTIONS)
                {
                    depth = 1;
                }
            }
            Some(Token::RParen) if depth > 0 => depth -= 1,
            Some(Token::Word(w))
                if depth == 1 && w.quote_style.is_none() && w.value.eq_ignore_ascii_case("SECRET") =>
            {
                // In value position (after a key), followed by one name
                // that ends the option.
                let after_key = !matches!(tok(k - 1), Some(Token::Comma | Token::LParen | Token::Period));
                let ends = matches!(tok(k + 2), Some(Token::Comma | Token::RParen));
                if let (true, true, Some(Token::Word(name))) = (after_key, ends, tok(k + 1)) {
                    let name = match name.quote_style {
                        Some(_) => name.value.clone(),
                        None => name.value.to_ascii_lowercase(),
                    };
                    refs.push((sig[k], sig[k + 1], name));
                }
            }
            _ => {}
        }
    }
    if refs.is_empty() {
        return None;
    }
    for (secret, name_at, name) in refs.into_iter().rev() {
        tokens[secret].token = Token::SingleQuotedString(crate::secrets::make_reference(&name));
        tokens.drain(secret + 1..=name_at);
    }
    Some(tokens)
}

/// Parses SQL text into statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    if sql.len() > MAX_STATEMENT_BYTES {
        return Err(SluiceError::new(
            ErrorKind::ProgramLimitExceeded,
            format!(
                "statement of {} bytes is longer than the limit of {MAX_STATEMENT_BYTES} bytes",
                sql.len()
            ),
        ));
    }
    on_deep_stack(sql.len(), || parse_checked(sql))
}

/// The longest statement text accepted.
pub const MAX_STATEMENT_BYTES: usize = 4 << 20;

/// The deepest nesting of expressions, subqueries and set operations
/// (`UNION`, `EXCEPT`, `INTERSECT`) accepted in one statement. Planning
/// walks these trees recursively; deeper ones are refused with 54001 before
/// anything else walks them.
pub const MAX_NESTING: usize = 1000;

/// Runs `f`, which parses (and may drop) a tree as deep as a statement of
/// `len` bytes can make, on a stack large enough for it. A left-deep chain
/// such as `1+1+...+1` is parsed in a loop but dropped recursively, one
/// frame per level, so a refused statement could otherwise overflow the
/// thread's stack while being thrown away. Short statements run where they
/// are.
pub fn on_deep_stack<T>(len: usize, f: impl FnOnce() -> T) -> T {
    if len < 16 * 1024 {
        return f();
    }
    // Generous per byte (two bytes can add a level), reserved not touched.
    stacker::grow((len * 256).max(4 << 20), f)
}

fn parse_checked(sql: &str) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let sql = rewrite_as_of(sql)?;
    let builder = match secret_option_tokens(&sql, &dialect) {
        Some(tokens) => DFParserBuilder::new(tokens),
        None => DFParserBuilder::new(sql.as_ref()),
    };
    let mut df = builder.with_dialect(&dialect).build()?;
    let mut out = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while df.parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        if df.parser.peek_token() == Token::EOF {
            break;
        }
        if expecting_delimiter {
            return Err(SluiceError::new(
                ErrorKind::Syntax,
                format!(
                    "syntax error: expected end of statement, found: {}",
                    df.parser.peek_token()
                ),
            ));
        }
        let mut statement = parse_one(&mut df)?;
        check_nesting(&statement)?;
        rewrite_pg_types(&mut statement)?;
        rewrite_asof_joins(&mut statement)?;
        out.push(statement);
        expecting_delimiter = true;
    }
    Ok(out)
}

/// Refuses a statement nested deeper than [`MAX_NESTING`] (54001), without
/// walking deeper than that itself.
pub fn check_nesting(statement: &Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::Visit;
    let mut depth = Nesting::default();
    let flow = match statement {
        Statement::DataFusion(DFStatement::Statement(s)) => s.visit(&mut depth),
        Statement::DataFusion(DFStatement::CopyTo(copy)) => match &copy.source {
            datafusion::sql::parser::CopyToSource::Query(q) => q.visit(&mut depth),
            datafusion::sql::parser::CopyToSource::Relation(_) => std::ops::ControlFlow::Continue(()),
        },
        Statement::DataFusion(DFStatement::Explain(explain)) => {
            return check_nesting(&Statement::DataFusion((*explain.statement).clone()));
        }
        Statement::CreateSink(c) | Statement::CreateMaterializedView(c) => c.query.visit(&mut depth),
        Statement::CopyOut { query, .. } => query.visit(&mut depth),
        Statement::Subscribe {
            target: SubscribeTarget::Query(q),
            ..
        } => q.visit(&mut depth),
        Statement::Explain(inner) => return check_nesting(inner),
        _ => std::ops::ControlFlow::Continue(()),
    };
    match flow {
        std::ops::ControlFlow::Continue(()) => Ok(()),
        std::ops::ControlFlow::Break(()) => Err(SluiceError::new(
            ErrorKind::StatementTooComplex,
            format!(
                "statement too complex: expressions, subqueries or set operations nested more \
                 than {MAX_NESTING} levels deep"
            ),
        )),
    }
}

/// Counts nesting while sqlparser's visitor walks a statement; breaks as
/// soon as it passes [`MAX_NESTING`].
#[derive(Default)]
struct Nesting {
    depth: usize,
    /// What each open query added (itself plus its set operations).
    queries: Vec<usize>,
}

impl datafusion::sql::sqlparser::ast::Visitor for Nesting {
    type Break = ();

    fn pre_visit_query(&mut self, query: &Query) -> std::ops::ControlFlow<()> {
        // The visitor walks set operations without a hook of its own: count
        // them here, before it descends into them.
        let added = 1 + set_operation_depth(&query.body);
        self.queries.push(added);
        self.enter(added)
    }

    fn post_visit_query(&mut self, _query: &Query) -> std::ops::ControlFlow<()> {
        self.depth -= self.queries.pop().unwrap_or(0);
        std::ops::ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, _expr: &SqlExpr) -> std::ops::ControlFlow<()> {
        self.enter(1)
    }

    fn post_visit_expr(&mut self, _expr: &SqlExpr) -> std::ops::ControlFlow<()> {
        self.depth -= 1;
        std::ops::ControlFlow::Continue(())
    }
}

impl Nesting {
    fn enter(&mut self, levels: usize) -> std::ops::ControlFlow<()> {
        self.depth += levels;
        if self.depth > MAX_NESTING {
            std::ops::ControlFlow::Break(())
        } else {
            std::ops::ControlFlow::Continue(())
        }
    }
}

/// How deep set operations nest in a query body, without recursion.
fn set_operation_depth(body: &datafusion::sql::sqlparser::ast::SetExpr) -> usize {
    use datafusion::sql::sqlparser::ast::SetExpr;
    let mut deepest = 0;
    let mut todo = vec![(body, 0usize)];
    while let Some((e, d)) = todo.pop() {
        deepest = deepest.max(d);
        if let SetExpr::SetOperation { left, right, .. } = e {
            todo.push((left, d + 1));
            todo.push((right, d + 1));
        }
    }
    deepest
}

/// `x::json`, `CAST(x AS jsonb)`, `x::uuid`: calls of the functions that
/// make values of those types (see [`crate::types`]), since DataFusion has
/// no SQL name for them.
pub fn rewrite_pg_types(statement: &mut Statement) -> Result<()> {
    use datafusion::sql::sqlparser::ast::DataType as SqlType;
    use std::ops::ControlFlow;
    let rewrite = |e: &mut SqlExpr| -> ControlFlow<ParserError> {
        if let Some(aggregated) = array_subquery(e) {
            match aggregated {
                Ok(sub) => *e = sub,
                Err(err) => return ControlFlow::Break(err),
            }
            return ControlFlow::Continue(());
        }
        if let Some(named) = regtype_names(e) {
            *e = named;
            return ControlFlow::Continue(());
        }
        if let SqlExpr::Cast { expr, data_type, .. } = e {
            let to = match data_type {
                SqlType::JSON => crate::types::PgType::Json,
                SqlType::JSONB => crate::types::PgType::Jsonb,
                SqlType::Uuid => crate::types::PgType::Uuid,
                _ => return ControlFlow::Continue(()),
            };
            let text = format!("{}({expr})", to.function());
            match Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&text)
                .and_then(|mut p| p.parse_expr())
            {
                Ok(call) => *e = call,
                Err(err) => return ControlFlow::Break(err),
            }
        }
        ControlFlow::Continue(())
    };
    match visit_statement(statement, &mut Exprs(rewrite)) {
        ControlFlow::Break(e) => Err(syntax(e)),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// `x::regtype::text` is the type's name in Postgres (pgcli reads column
/// types so); datafusion-pg-catalog's `regtype` is the oid, so the text
/// would be a number. It becomes `format_type(x, NULL)`. In a cast to
/// `text[]`, each `y::regtype[]` inside (pgcli's function arguments,
/// `COALESCE(a::regtype[], b::regtype[])::text[]`) becomes
/// `format_types(y)`, the names of an array of oids.
fn regtype_names(e: &mut SqlExpr) -> Option<SqlExpr> {
    use datafusion::sql::sqlparser::ast::{ArrayElemTypeDef, DataType as SqlType};
    fn is_regtype(t: &SqlType) -> bool {
        matches!(t, SqlType::Custom(n, _) if n.to_string().eq_ignore_ascii_case("regtype")
            || n.to_string().eq_ignore_ascii_case("pg_catalog.regtype"))
    }
    fn is_text(t: &SqlType) -> bool {
        matches!(t, SqlType::Text | SqlType::Varchar(_) | SqlType::String(_))
            || matches!(t, SqlType::Custom(n, _) if n.to_string().eq_ignore_ascii_case("name"))
    }
    fn element(t: &SqlType) -> Option<&SqlType> {
        match t {
            SqlType::Array(ArrayElemTypeDef::SquareBracket(t, _) | ArrayElemTypeDef::AngleBracket(t)) => {
                Some(t)
            }
            _ => None,
        }
    }
    let call = |text: String| {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_expr())
            .ok()
    };
    let SqlExpr::Cast { expr, data_type, .. } = e else {
        return None;
    };
    if is_text(data_type)
        && let SqlExpr::Cast {
            expr: inner,
            data_type: inner_type,
            ..
        } = expr.as_ref()
        && is_regtype(inner_type)
    {
        return call(format!("format_type({inner}, NULL)"));
    }
    if element(data_type).is_some_and(is_text) {
        let mut changed = false;
        let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(expr.as_mut(), |x| {
            if let SqlExpr::Cast {
                expr: y,
                data_type: t,
                ..
            } = x
                && element(t).is_some_and(is_regtype)
                && let Some(names) = call(format!("format_types({y})"))
            {
                *x = names;
                changed = true;
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        if changed {
            return Some(e.clone());
        }
    }
    None
}

/// Runs an expression rewrite after each expression is visited (as
/// sqlparser's `visit_expressions_mut` does).
struct Exprs<F>(F);

impl<F: FnMut(&mut SqlExpr) -> std::ops::ControlFlow<ParserError>> VisitorMut for Exprs<F> {
    type Break = ParserError;

    fn post_visit_expr(&mut self, expr: &mut SqlExpr) -> std::ops::ControlFlow<ParserError> {
        (self.0)(expr)
    }
}

/// `'{"north","east"}'::text[]` (and `CAST('{1,2}' AS int[])`): the text of a
/// Postgres array literal becomes `ARRAY['north', 'east']` under the same
/// cast, read as Postgres reads it: double-quoted elements with backslash
/// escapes, an unquoted `NULL` is NULL, space around unquoted elements
/// dropped. (datafusion-pg-catalog's rewrite of the same cast splits on
/// commas and keeps the quotes: a silently wrong array.) Nested arrays are
/// left alone.
pub fn read_array_literals(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{Array, DataType as SqlType, Value, ValueWithSpan};
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let SqlExpr::Cast {
            expr,
            data_type: SqlType::Array(_),
            ..
        } = e
            && let SqlExpr::Value(ValueWithSpan {
                value: Value::SingleQuotedString(text),
                ..
            }) = expr.as_ref()
            && let Some(elements) = array_elements(text)
        {
            let elem = elements
                .into_iter()
                .map(|v| match v {
                    Some(v) => SqlExpr::Value(Value::SingleQuotedString(v).into()),
                    None => SqlExpr::Value(Value::Null.into()),
                })
                .collect();
            **expr = SqlExpr::Array(Array { elem, named: true });
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The name `current_user` takes while datafusion-pg-catalog's rewrite
/// runs: it would rename `current_user` to `session_user`, and the column
/// would be named so (`SELECT current_user` is `current_user` in Postgres).
const CURRENT_USER_HIDDEN: &str = "sluice_current_user";

/// Renames `current_user` to [`CURRENT_USER_HIDDEN`] (`hide`) or back;
/// hiding also makes `current_role` a call.
pub fn hide_current_user(statement: &mut datafusion::sql::sqlparser::ast::Statement, hide: bool) {
    use datafusion::sql::sqlparser::ast::Ident;
    let (from, to) = if hide {
        ("current_user", CURRENT_USER_HIDDEN)
    } else {
        (CURRENT_USER_HIDDEN, "current_user")
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let SqlExpr::Function(f) = e
            && f.name.0.len() == 1
            && f.name.to_string().eq_ignore_ascii_case(from)
        {
            f.name = ObjectName::from(vec![Ident::new(to)]);
        }
        // `current_role`, which the SQL parser reads as a column name.
        if hide
            && let SqlExpr::Identifier(i) = e
            && i.quote_style.is_none()
            && i.value.eq_ignore_ascii_case("current_role")
            && let Ok(call) = Parser::new(&PostgreSqlDialect {})
                .try_with_sql("current_role()")
                .and_then(|mut p| p.parse_expr())
        {
            *e = call;
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// pg_type's function columns (`typinput`, `typreceive`, ...), regproc
/// in Postgres, held by name in pg_catalog.
const REGPROC_COLUMNS: &[&str] = &[
    "typinput",
    "typoutput",
    "typreceive",
    "typsend",
    "typmodin",
    "typmodout",
    "typanalyze",
];

/// `'array_in'::regproc` stays the name: pg_catalog keeps functions by
/// name (`pg_type.typinput` is text), so it compares as it is (pgjdbc's
/// `getTypeInfo`). Run before datafusion-pg-catalog's rewrite, which would
/// look the name up as an oid. For the same reason a join of a function's
/// oid with such a column (`proc.oid = typ.typreceive`, Npgsql's type
/// loading) compares the function's name.
pub fn keep_regproc_names(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, DataType as SqlType, Ident, Value};
    fn is_regproc_column(e: &SqlExpr) -> bool {
        let name = match e {
            SqlExpr::Identifier(i) => i,
            SqlExpr::CompoundIdentifier(parts) => match parts.last() {
                Some(i) => i,
                None => return false,
            },
            _ => return false,
        };
        REGPROC_COLUMNS.contains(&name.value.to_ascii_lowercase().as_str())
    }
    /// `p.oid` becomes `p.proname`.
    fn oid_to_proname(e: &mut SqlExpr) {
        if let SqlExpr::CompoundIdentifier(parts) = e
            && parts.len() == 2
            && parts[1].value.eq_ignore_ascii_case("oid")
        {
            parts[1] = Ident::new("proname");
        }
    }
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::Eq,
            right,
        } = e
        {
            if is_regproc_column(right) {
                oid_to_proname(left);
            } else if is_regproc_column(left) {
                oid_to_proname(right);
            }
        }
        if let SqlExpr::Cast {
            expr,
            data_type: SqlType::Custom(name, _),
            ..
        } = e
            && matches!(
                name.to_string().to_ascii_lowercase().as_str(),
                "regproc" | "pg_catalog.regproc"
            )
            && matches!(expr.as_ref(), SqlExpr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)))
        {
            *e = (**expr).clone();
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// A function's source as `CREATE OR REPLACE FUNCTION` text, built from
/// pg_catalog (psql's `\\sf`, `\\ef`); `{oid}` is the function's oid.
/// Sluice's functions are built in, so their body is their internal name,
/// as Postgres shows its own.
const FUNCTIONDEF: &str = "(SELECT max('CREATE OR REPLACE FUNCTION ' || n.nspname || '.' || p.proname
    || '(' || coalesce(array_to_string(format_types(p.proargtypes), ', '), '') || ')' || chr(10)
    || ' RETURNS ' || coalesce(format_type(p.prorettype, NULL), 'void') || chr(10)
    || ' LANGUAGE ' || coalesce(l.lanname, 'internal') || chr(10)
    || ' ' || CASE p.provolatile WHEN 'i' THEN 'IMMUTABLE' WHEN 's' THEN 'STABLE' ELSE 'VOLATILE' END || chr(10)
    || 'AS $function$' || coalesce(p.prosrc, p.proname) || '$function$' || chr(10))
  FROM pg_catalog.pg_proc p
  JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
  LEFT JOIN pg_catalog.pg_language l ON l.oid = p.prolang
  WHERE p.oid = ({oid}))";

/// psql's `\\sf name` as Postgres answers it: `'name'::regproc::oid` (or
/// `'name(args)'::regprocedure::oid`) becomes the function's oid looked up
/// in pg_proc (42883 when there is none), and `pg_get_functiondef(oid)` the
/// definition text built from pg_catalog ([`FUNCTIONDEF`]). Run before
/// [`hide_select_list_subqueries`], so the subqueries it makes are kept.
pub fn function_lookups(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    use datafusion::sql::sqlparser::ast::{
        DataType as SqlType, FunctionArg, FunctionArgExpr, FunctionArguments, Value,
    };
    let type_name = |t: &SqlType| match t {
        SqlType::Custom(name, _) => name.to_string().to_ascii_lowercase(),
        other => other.to_string().to_ascii_lowercase(),
    };
    let parse = |text: &str| {
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(text)
            .and_then(|mut p| p.parse_expr())
    };
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(statement, |e| {
        if let SqlExpr::Cast { expr, data_type, .. } = e
            && matches!(type_name(data_type).as_str(), "oid" | "pg_catalog.oid")
            && let SqlExpr::Cast {
                expr: inner,
                data_type: inner_type,
                ..
            } = expr.as_ref()
            && matches!(
                type_name(inner_type).as_str(),
                "regproc" | "pg_catalog.regproc" | "regprocedure" | "pg_catalog.regprocedure"
            )
            && let SqlExpr::Value(v) = inner.as_ref()
            && let Value::SingleQuotedString(text) = &v.value
        {
            let without_args = text.split('(').next().unwrap_or_default().trim();
            let name = without_args
                .rsplit('.')
                .next()
                .unwrap_or_default()
                .trim_matches('"');
            let quoted = name.replace('\'', "''");
            // No such function: 42883, as Postgres's regproc input raises.
            if let Ok(lookup) = parse(&format!(
                "coalesce((SELECT min(oid) FROM pg_catalog.pg_proc WHERE proname = '{quoted}'), \
                 {}('{quoted}'))",
                crate::functions::UndefinedFunction::NAME
            )) {
                *e = lookup;
            }
        }
        if let SqlExpr::Function(f) = e
            && f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_get_functiondef"))
            && let FunctionArguments::List(list) = &f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(oid))] = list.args.as_slice()
            && let Ok(def) = parse(&FUNCTIONDEF.replace("{oid}", &oid.to_string()))
        {
            *e = def;
        }
        // `pg_get_userbyid(oid)`: the role of that oid in pg_roles (which
        // `relowner` names), "unknown (OID=n)" for none, as in Postgres.
        if let SqlExpr::Function(f) = e
            && f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_get_userbyid"))
            && let FunctionArguments::List(list) = &f.args
            && let [FunctionArg::Unnamed(FunctionArgExpr::Expr(role))] = list.args.as_slice()
            && let Ok(lookup) = parse(&format!(
                "(SELECT coalesce(min(r.rolname), 'unknown (OID=' || CAST({role} AS TEXT) || ')') AS pg_get_userbyid \
                 FROM pg_catalog.pg_roles r WHERE r.oid = {role})"
            ))
        {
            *e = lookup;
        }
        // `pg_get_viewdef(oid [, pretty])` / `pg_get_viewdef('name')`: the
        // materialized view's query, from pg_matviews (psql's `\d+ view`).
        if let SqlExpr::Function(f) = e
            && f.name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_get_viewdef"))
            && let FunctionArguments::List(list) = &f.args
            && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(view))) = list.args.first()
            && list.args.len() <= 2
        {
            let by = match view {
                SqlExpr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)) => {
                    format!("c.relname = {view}")
                }
                _ => format!("c.oid = {view}"),
            };
            if let Ok(def) = parse(&format!(
                "(SELECT min(v.definition) AS pg_get_viewdef FROM pg_catalog.pg_matviews v \
                 JOIN pg_catalog.pg_class c ON c.relname = v.matviewname WHERE {by})"
            )) {
                *e = def;
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// The elements of a one-dimensional Postgres array literal (`{a,"b c",NULL}`).
pub(crate) fn array_elements(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut v = String::new();
            loop {
                match chars.next()? {
                    '\\' => v.push(chars.next()?),
                    '"' => break,
                    c => v.push(c),
                }
            }
            out.push(Some(v));
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            let mut v = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                match c {
                    '{' | '}' | '"' => return None,
                    '\\' => {
                        chars.next();
                        v.push(chars.next()?);
                    }
                    c => {
                        chars.next();
                        v.push(c);
                    }
                }
            }
            let v = v.trim_end().to_string();
            if v.is_empty() {
                return None;
            }
            out.push(if v.eq_ignore_ascii_case("null") {
                None
            } else {
                Some(v)
            });
        }
        match chars.next() {
            Some(',') => continue,
            None => return Some(out),
            Some(_) => return None,
        }
    }
}

/// Hides each subquery that is a whole select-list item (`SELECT (SELECT
/// ...) AS x`) in parentheses, and [`restore_select_list_subqueries`]
/// takes them out again. Between the two, datafusion-pg-catalog's rewrite
/// rules run: one of them replaces a correlated subquery there with NULL
/// and adds `LIMIT 1` to the others, both silently wrong answers now that
/// Sluice runs such subqueries itself (engine/src/subquery.rs).
pub fn hide_select_list_subqueries(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    let _ = statement.visit(&mut SelectListSubqueries { hide: true });
}

/// Undoes [`hide_select_list_subqueries`].
pub fn restore_select_list_subqueries(statement: &mut datafusion::sql::sqlparser::ast::Statement) {
    let _ = statement.visit(&mut SelectListSubqueries { hide: false });
}

struct SelectListSubqueries {
    hide: bool,
}

impl VisitorMut for SelectListSubqueries {
    type Break = ();

    fn pre_visit_query(&mut self, query: &mut Query) -> std::ops::ControlFlow<()> {
        use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
        if let SetExpr::Select(select) = query.body.as_mut() {
            for item in &mut select.projection {
                let (SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. }) = item else {
                    continue;
                };
                match e {
                    SqlExpr::Subquery(_) if self.hide => {
                        let inner = std::mem::replace(
                            e,
                            SqlExpr::Value(datafusion::sql::sqlparser::ast::Value::Null.into()),
                        );
                        *e = SqlExpr::Nested(Box::new(inner));
                    }
                    SqlExpr::Nested(inner)
                        if !self.hide && matches!(inner.as_ref(), SqlExpr::Subquery(_)) =>
                    {
                        let inner = std::mem::replace(
                            inner.as_mut(),
                            SqlExpr::Value(datafusion::sql::sqlparser::ast::Value::Null.into()),
                        );
                        *e = inner;
                    }
                    _ => {}
                }
            }
        }
        std::ops::ControlFlow::Continue(())
    }
}

/// Walks the SQL of every statement that holds some (queries, DDL, the
/// query of a sink, a view, a COPY or a SUBSCRIBE, what EXPLAIN explains).
fn visit_statement<V: VisitorMut<Break = ParserError>>(
    statement: &mut Statement,
    v: &mut V,
) -> std::ops::ControlFlow<ParserError> {
    use std::ops::ControlFlow;
    match statement {
        Statement::DataFusion(DFStatement::Statement(s)) => s.visit(v),
        Statement::DataFusion(DFStatement::CopyTo(copy)) => match &mut copy.source {
            datafusion::sql::parser::CopyToSource::Query(q) => q.visit(v),
            datafusion::sql::parser::CopyToSource::Relation(_) => ControlFlow::Continue(()),
        },
        Statement::DataFusion(DFStatement::Explain(explain)) => match explain.statement.as_mut() {
            DFStatement::Statement(s) => s.visit(v),
            _ => ControlFlow::Continue(()),
        },
        Statement::CreateSink(c) | Statement::CreateMaterializedView(c) => c.query.visit(v),
        Statement::CopyOut { query, .. } => query.visit(v),
        Statement::Subscribe {
            target: SubscribeTarget::Query(q),
            ..
        } => q.visit(v),
        Statement::Explain(inner) => visit_statement(inner, v),
        _ => ControlFlow::Continue(()),
    }
}

/// `l ASOF JOIN r MATCH_CONDITION (l.t >= r.t) [ON l.k = r.k ...]`
/// (Snowflake's spelling, which the parser takes): for each row of `l`,
/// the row of `r` with the same keys and the latest time at or before
/// its own, NULL-padded when there is none. Over streams that is a LEFT
/// temporal join on the two event times, which it becomes:
/// `l LEFT JOIN sluice_versions('r', 't', 'l', 't') AS r ON ...`.
pub fn rewrite_asof_joins(statement: &mut Statement) -> Result<()> {
    match visit_statement(statement, &mut AsOfJoins) {
        std::ops::ControlFlow::Break(e) => Err(SluiceError::new(ErrorKind::NotSupported, e.to_string())),
        std::ops::ControlFlow::Continue(()) => Ok(()),
    }
}

struct AsOfJoins;

impl VisitorMut for AsOfJoins {
    type Break = ParserError;

    fn pre_visit_query(&mut self, query: &mut Query) -> std::ops::ControlFlow<ParserError> {
        match asof_in_set_expr(&mut query.body) {
            Ok(()) => std::ops::ControlFlow::Continue(()),
            Err(e) => std::ops::ControlFlow::Break(e),
        }
    }
}

fn asof_in_set_expr(
    body: &mut datafusion::sql::sqlparser::ast::SetExpr,
) -> std::result::Result<(), ParserError> {
    use datafusion::sql::sqlparser::ast::SetExpr;
    match body {
        SetExpr::Select(select) => {
            for t in &mut select.from {
                asof_in_table(t)?;
            }
            Ok(())
        }
        SetExpr::SetOperation { left, right, .. } => {
            asof_in_set_expr(left)?;
            asof_in_set_expr(right)
        }
        _ => Ok(()),
    }
}

fn asof_in_table(
    t: &mut datafusion::sql::sqlparser::ast::TableWithJoins,
) -> std::result::Result<(), ParserError> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator, JoinConstraint, JoinOperator, TableFactor};
    if let TableFactor::NestedJoin { table_with_joins, .. } = &mut t.relation {
        asof_in_table(table_with_joins)?;
    }
    for join in &mut t.joins {
        if let TableFactor::NestedJoin { table_with_joins, .. } = &mut join.relation {
            asof_in_table(table_with_joins)?;
        }
        let JoinOperator::AsOf {
            match_condition,
            constraint,
        } = &join.join_operator
        else {
            continue;
        };
        let refuse = |what: &str| {
            Err(ParserError::ParserError(format!(
                "ASOF JOIN {}: {what}",
                join.relation
            )))
        };
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = &join.relation
        else {
            return refuse("the right input must be a stream named by itself (not a subquery or a function)");
        };
        let stream = name.0.last().and_then(|p| p.as_ident()).map(ident_value);
        let Some(stream) = stream else {
            return refuse("the right input must be a stream's name");
        };
        let right_name = alias.as_ref().map_or(stream.clone(), |a| ident_value(&a.name));
        // l.t >= r.t, or the same mirrored.
        let column = |e: &SqlExpr| -> Option<(Option<String>, String)> {
            match e {
                SqlExpr::Identifier(c) => Some((None, ident_value(c))),
                SqlExpr::CompoundIdentifier(parts) if parts.len() == 2 => {
                    Some((Some(ident_value(&parts[0])), ident_value(&parts[1])))
                }
                _ => None,
            }
        };
        let SqlExpr::BinaryOp { left, op, right } = match_condition else {
            return refuse("write MATCH_CONDITION (left.time >= right.time)");
        };
        let (probe, version) = match op {
            BinaryOperator::GtEq => (left, right),
            BinaryOperator::LtEq => (right, left),
            _ => {
                return refuse(
                    "only MATCH_CONDITION (left.time >= right.time) runs over streams (the latest right \
                     row at or before the left row's time)",
                );
            }
        };
        let (Some(probe), Some((version_rel, version_col))) = (column(probe), column(version)) else {
            return refuse("MATCH_CONDITION compares two columns, left.time >= right.time");
        };
        if version_rel.as_ref().is_some_and(|r| *r != right_name) || probe.0.as_ref() == Some(&right_name) {
            return refuse("write MATCH_CONDITION (left.time >= right.time), the left input's time first");
        }
        let quote = |t: &str| format!("'{}'", t.replace('\'', "''"));
        let text = format!(
            "{VERSIONS}({}, {}, {}, {}) AS {}",
            quote(&stream),
            quote(&probe.1),
            probe.0.as_deref().map_or("NULL".to_string(), quote),
            quote(&version_col),
            datafusion::sql::sqlparser::ast::Ident::with_quote('"', right_name.as_str())
        );
        let relation = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&text)
            .and_then(|mut p| p.parse_table_factor())?;
        let constraint = match constraint {
            JoinConstraint::None => {
                return refuse("an ASOF JOIN over streams needs ON left.key = right.key (or USING)");
            }
            c => c.clone(),
        };
        join.relation = relation;
        join.join_operator = JoinOperator::LeftOuter(constraint);
    }
    Ok(())
}

/// An identifier as DataFusion resolves it: unquoted ones in lower case.
fn ident_value(i: &datafusion::sql::sqlparser::ast::Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_ascii_lowercase(),
    }
}

/// `ARRAY(SELECT x FROM ... [ORDER BY ...])` (an array of a subquery's
/// rows, which psql's `\\du` and `\\d+` use): DataFusion has no such
/// constructor, so it becomes the scalar subquery
/// `coalesce((SELECT array_agg(x [ORDER BY ...]) FROM ...), make_array())`,
/// which it decorrelates (and an empty array over no rows, as Postgres
/// gives). Only a plain select of one column (no GROUP BY, DISTINCT,
/// HAVING or LIMIT, which an aggregate would change) is rewritten.
fn array_subquery(e: &SqlExpr) -> Option<std::result::Result<SqlExpr, ParserError>> {
    use datafusion::sql::sqlparser::ast::{FunctionArguments, GroupByExpr, SelectItem, SetExpr};
    let SqlExpr::Function(f) = e else { return None };
    if !f.name.to_string().eq_ignore_ascii_case("array") {
        return None;
    }
    let FunctionArguments::Subquery(q) = &f.args else {
        return None;
    };
    let mut q = q.as_ref().clone();
    if q.limit_clause.is_some() || q.fetch.is_some() || q.with.is_some() {
        return None;
    }
    let SetExpr::Select(select) = q.body.as_mut() else {
        return None;
    };
    let plain = select.projection.len() == 1
        && select.distinct.is_none()
        && select.having.is_none()
        && matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty());
    if !plain {
        return None;
    }
    let item = match &select.projection[0] {
        SelectItem::UnnamedExpr(x) | SelectItem::ExprWithAlias { expr: x, .. } => x.clone(),
        _ => return None,
    };
    let order = q.order_by.take().map(|o| format!(" {o}")).unwrap_or_default();
    let text = format!("array_agg({item}{order})");
    let agg = match Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&text)
        .and_then(|mut p| p.parse_expr())
    {
        Ok(agg) => agg,
        Err(err) => return Some(Err(err)),
    };
    let SetExpr::Select(select) = q.body.as_mut() else {
        unreachable!("matched above")
    };
    select.projection = vec![SelectItem::UnnamedExpr(agg)];
    // Over no rows, an empty array (array_agg gives NULL).
    Some(
        Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&format!("coalesce(({q}), make_array())"))
            .and_then(|mut p| p.parse_expr()),
    )
}

fn parse_one(df: &mut datafusion::sql::parser::DFParser) -> Result<Statement> {
    let first = peek_word(&df.parser, 0);
    let second = peek_word(&df.parser, 1);
    let third = peek_word(&df.parser, 2);
    let statement = match (first.as_deref(), second.as_deref(), third.as_deref()) {
        (Some("EXPLAIN"), Some("CREATE"), Some("SINK" | "MATERIALIZED")) => {
            df.parser.next_token();
            Statement::Explain(Box::new(parse_one(df)?))
        }
        (Some("MOVE"), _, _) => {
            df.parser.next_token();
            let (name, direction) = parse_fetch_rest(&mut df.parser)?;
            Statement::Move { name, direction }
        }
        (Some("FETCH"), _, _) => {
            df.parser.next_token();
            let (name, direction) = parse_fetch_rest(&mut df.parser)?;
            Statement::DataFusion(DFStatement::Statement(Box::new(
                datafusion::sql::sqlparser::ast::Statement::Fetch {
                    name,
                    direction,
                    position: datafusion::sql::sqlparser::ast::FetchPosition::From,
                    into: None,
                },
            )))
        }
        (Some("SUBSCRIBE"), _, _) => {
            df.parser.next_token();
            Statement::Subscribe {
                target: parse_subscribe_target(&mut df.parser)?,
                copy: false,
            }
        }
        (Some("COPY"), _, _)
            if df.parser.peek_nth_token(1).token == Token::LParen
                && peek_word(&df.parser, 2).as_deref() == Some("SUBSCRIBE") =>
        {
            for _ in 0..3 {
                df.parser.next_token();
            }
            let target = parse_subscribe_target(&mut df.parser)?;
            df.parser.expect_token(&Token::RParen).map_err(syntax)?;
            expect_word(&mut df.parser, "TO")?;
            expect_word(&mut df.parser, "STDOUT")?;
            Statement::Subscribe { target, copy: true }
        }
        (Some("COPY"), _, _) if copies_from_stdin(&df.parser) => {
            df.parser.next_token();
            let table = df.parser.parse_object_name(false).map_err(syntax)?;
            let mut columns = Vec::new();
            if df.parser.consume_token(&Token::LParen) {
                loop {
                    columns.push(column_name(&df.parser.parse_identifier().map_err(syntax)?));
                    if !df.parser.consume_token(&Token::Comma) {
                        break;
                    }
                }
                df.parser.expect_token(&Token::RParen).map_err(syntax)?;
            }
            expect_word(&mut df.parser, "FROM")?;
            expect_word(&mut df.parser, "STDIN")?;
            let options = parse_copy_options(&mut df.parser)?;
            Statement::CopyIn {
                table,
                columns,
                options,
            }
        }
        (Some("COPY"), _, _) if copies_to_stdout(&df.parser) => {
            df.parser.next_token();
            let query = if df.parser.consume_token(&Token::LParen) {
                let q = df.parser.parse_query().map_err(syntax)?;
                df.parser.expect_token(&Token::RParen).map_err(syntax)?;
                q
            } else {
                let table = df.parser.parse_object_name(false).map_err(syntax)?;
                let mut p = Parser::new(&PostgreSqlDialect {})
                    .try_with_sql(&format!("SELECT * FROM {table}"))
                    .map_err(syntax)?;
                p.parse_query().map_err(syntax)?
            };
            expect_word(&mut df.parser, "TO")?;
            expect_word(&mut df.parser, "STDOUT")?;
            let options = parse_copy_options(&mut df.parser)?;
            Statement::CopyOut { query, options }
        }
        (Some("CREATE"), Some("SINK"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::CreateSink(parse_create_job(&mut df.parser, true)?)
        }
        (Some("CREATE"), Some("MATERIALIZED"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            expect_word(&mut df.parser, "VIEW")?;
            Statement::CreateMaterializedView(parse_create_job(&mut df.parser, false)?)
        }
        (Some("ALTER"), Some("SINK"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            expect_word(&mut df.parser, "SET")?;
            let options = parse_options(&mut df.parser)?;
            Statement::AlterSink { name, options }
        }
        (Some("DROP"), Some("SINK"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            let if_exists = df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            Statement::DropSink { name, if_exists }
        }
        (Some("DROP"), Some("MATERIALIZED"), Some("VIEW")) => {
            for _ in 0..3 {
                df.parser.next_token();
            }
            let if_exists = df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            Statement::DropMaterializedView { name, if_exists }
        }
        (Some("SHOW"), Some("SINKS"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::ShowSinks
        }
        (Some("SHOW"), Some("MATERIALIZED"), Some("VIEWS")) => {
            for _ in 0..3 {
                df.parser.next_token();
            }
            Statement::ShowMaterializedViews
        }
        (Some("SHOW"), Some("JOBS"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::ShowJobs
        }
        (Some("SHOW"), Some("CHECKPOINTS"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::ShowCheckpoints
        }
        (Some("CREATE"), Some("STREAM"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::CreateStream(parse_create_stream(&mut df.parser)?)
        }
        (Some("DROP"), Some("STREAM"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            let if_exists = df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            Statement::DropStream { name, if_exists }
        }
        (Some("CREATE" | "ALTER"), Some("SECRET"), _) => {
            let replace = first.as_deref() == Some("ALTER");
            df.parser.next_token();
            df.parser.next_token();
            let if_not_exists = !replace
                && df
                    .parser
                    .parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            expect_word(&mut df.parser, "AS")?;
            let value = match df.parser.next_token().token {
                Token::SingleQuotedString(s) => s,
                other => {
                    return Err(SluiceError::new(
                        ErrorKind::Syntax,
                        format!("syntax error: a secret's value is a quoted string, found: {other}"),
                    ));
                }
            };
            Statement::CreateSecret {
                name,
                if_not_exists,
                replace,
                value,
            }
        }
        (Some("DROP"), Some("SECRET"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            let if_exists = df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
            let name = df.parser.parse_object_name(false).map_err(syntax)?;
            Statement::DropSecret { name, if_exists }
        }
        (Some("SHOW"), Some("SECRETS"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::ShowSecrets
        }
        (Some("SHOW"), Some("STREAMS"), _) => {
            df.parser.next_token();
            df.parser.next_token();
            Statement::ShowStreams
        }
        _ => Statement::DataFusion(df.parse_statement()?),
    };
    Ok(statement)
}

fn parse_subscribe_target(parser: &mut Parser) -> Result<SubscribeTarget> {
    let _ = parser.parse_keyword(Keyword::TO);
    if parser.consume_token(&Token::LParen) {
        let query = parser.parse_query().map_err(syntax)?;
        parser.expect_token(&Token::RParen).map_err(syntax)?;
        Ok(SubscribeTarget::Query(query))
    } else {
        Ok(SubscribeTarget::View(
            parser.parse_object_name(false).map_err(syntax)?,
        ))
    }
}

/// Whether the statement ahead is `COPY <table or (query)> TO STDOUT`
/// (DataFusion's own COPY writes to a path or URL).
fn copies_to_stdout(parser: &Parser) -> bool {
    let mut n = 1;
    if parser.peek_nth_token(n).token == Token::LParen {
        let mut depth = 0usize;
        loop {
            match parser.peek_nth_token(n).token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        n += 1;
                        break;
                    }
                }
                Token::EOF => return false,
                _ => {}
            }
            n += 1;
        }
    } else {
        match skip_table_name(parser, n) {
            Some(after) => n = after,
            None => return false,
        }
    }
    peek_word(parser, n).as_deref() == Some("TO") && peek_word(parser, n + 1).as_deref() == Some("STDOUT")
}

/// The token after a (possibly qualified) table name starting at token
/// `n`, or None if none starts there.
fn skip_table_name(parser: &Parser, mut n: usize) -> Option<usize> {
    loop {
        match parser.peek_nth_token(n).token {
            Token::Word(_) => n += 1,
            _ => return None,
        }
        if parser.peek_nth_token(n).token == Token::Period {
            n += 1;
        } else {
            return Some(n);
        }
    }
}

/// `COPY name [(a, b)] FROM STDIN`.
fn copies_from_stdin(parser: &Parser) -> bool {
    let Some(mut n) = skip_table_name(parser, 1) else {
        return false;
    };
    if parser.peek_nth_token(n).token == Token::LParen {
        while !matches!(parser.peek_nth_token(n).token, Token::RParen | Token::EOF) {
            n += 1;
        }
        n += 1;
    }
    peek_word(parser, n).as_deref() == Some("FROM") && peek_word(parser, n + 1).as_deref() == Some("STDIN")
}

/// `WITH (FORMAT csv, HEADER, DELIMITER ',', NULL '')` or the older
/// `[WITH] CSV [HEADER]` / `DELIMITER [AS] 'x'` / `NULL [AS] 'x'` words.
fn parse_copy_options(parser: &mut Parser) -> Result<CopyOptions> {
    let mut o = CopyOptions::text();
    let mut delimiter = None;
    let mut null = None;
    let bad = |what: String| SluiceError::new(ErrorKind::Syntax, what);
    let string = |parser: &mut Parser| parser.parse_literal_string().map_err(syntax);
    let boolean = |parser: &mut Parser| -> Result<bool> {
        match peek_word(parser, 0).as_deref() {
            Some("TRUE" | "ON" | "1") => {
                parser.next_token();
                Ok(true)
            }
            Some("FALSE" | "OFF" | "0") => {
                parser.next_token();
                Ok(false)
            }
            _ => Ok(true),
        }
    };
    let _ = parser.parse_keyword(Keyword::WITH);
    let parenthesized = parser.consume_token(&Token::LParen);
    while let Some(word) = peek_word(parser, 0) {
        parser.next_token();
        match word.as_str() {
            "FORMAT" => {
                let f = parser
                    .parse_identifier()
                    .map_err(syntax)?
                    .value
                    .to_ascii_lowercase();
                match f.as_str() {
                    "csv" => o.csv = true,
                    "text" => o.csv = false,
                    other => {
                        return Err(SluiceError::not_supported(format!(
                            "COPY format {other}: text and csv are"
                        )));
                    }
                }
            }
            "CSV" => o.csv = true,
            "HEADER" => o.header = boolean(parser)?,
            "DELIMITER" => {
                let _ = parser.parse_keyword(Keyword::AS);
                let d = string(parser)?;
                let mut chars = d.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) => delimiter = Some(c),
                    _ => {
                        return Err(bad(format!(
                            "COPY delimiter must be a single character, not '{d}'"
                        )));
                    }
                }
            }
            "NULL" => {
                let _ = parser.parse_keyword(Keyword::AS);
                null = Some(string(parser)?);
            }
            other => {
                return Err(bad(format!(
                    "COPY option {other} is not supported (FORMAT, HEADER, DELIMITER, NULL are)"
                )));
            }
        }
        if !parser.consume_token(&Token::Comma) && parenthesized {
            break;
        }
    }
    if parenthesized {
        parser.expect_token(&Token::RParen).map_err(syntax)?;
    }
    if o.csv {
        o.delimiter = ',';
        o.null = String::new();
    }
    if let Some(d) = delimiter {
        o.delimiter = d;
    }
    if let Some(n) = null {
        o.null = n;
    }
    if o.header && !o.csv {
        return Err(bad("COPY HEADER is available only in CSV mode".into()));
    }
    Ok(o)
}

/// What follows FETCH or MOVE, as Postgres reads it: `[direction] [FROM |
/// IN] cursor`, where a count may be signed (`MOVE -2 FROM c`, psycopg's
/// relative scroll) and `FORWARD` / `BACKWARD` may stand alone.
fn parse_fetch_rest(
    parser: &mut Parser,
) -> Result<(
    datafusion::sql::sqlparser::ast::Ident,
    datafusion::sql::sqlparser::ast::FetchDirection,
)> {
    use datafusion::sql::sqlparser::ast::{FetchDirection as D, Value};
    fn count(parser: &mut Parser) -> Option<datafusion::sql::sqlparser::ast::ValueWithSpan> {
        let sign = match parser.peek_token().token {
            Token::Minus => "-",
            Token::Plus => "",
            _ => match parser.peek_token().token {
                Token::Number(..) => "",
                _ => return None,
            },
        };
        if matches!(parser.peek_token().token, Token::Minus | Token::Plus) {
            parser.next_token();
        }
        match parser.next_token().token {
            Token::Number(n, _) => Some(Value::Number(format!("{sign}{n}"), false).with_empty_span()),
            _ => {
                parser.prev_token();
                None
            }
        }
    }
    let required = |parser: &mut Parser, what: &str| {
        count(parser).ok_or_else(|| {
            SluiceError::new(
                ErrorKind::Syntax,
                format!(
                    "syntax error: expected a row count after {what}, found: {}",
                    parser.peek_token()
                ),
            )
        })
    };
    let word = peek_word(parser, 0);
    let direction = match word.as_deref() {
        Some(w @ ("NEXT" | "PRIOR" | "FIRST" | "LAST")) => {
            parser.next_token();
            match w {
                "NEXT" => D::Next,
                "PRIOR" => D::Prior,
                "FIRST" => D::First,
                _ => D::Last,
            }
        }
        Some("ABSOLUTE") => {
            parser.next_token();
            D::Absolute {
                limit: required(parser, "ABSOLUTE")?,
            }
        }
        Some("RELATIVE") => {
            parser.next_token();
            D::Relative {
                limit: required(parser, "RELATIVE")?,
            }
        }
        Some("ALL") => {
            parser.next_token();
            D::All
        }
        Some(w @ ("FORWARD" | "BACKWARD")) => {
            parser.next_token();
            let all = peek_word(parser, 0).as_deref() == Some("ALL");
            if all {
                parser.next_token();
            }
            match (w, all) {
                ("FORWARD", true) => D::ForwardAll,
                ("FORWARD", false) => D::Forward { limit: count(parser) },
                (_, true) => D::BackwardAll,
                _ => D::Backward { limit: count(parser) },
            }
        }
        _ => match count(parser) {
            Some(limit) => D::Count { limit },
            None => D::Next,
        },
    };
    if matches!(peek_word(parser, 0).as_deref(), Some("FROM" | "IN")) {
        parser.next_token();
    }
    let name = parser.parse_identifier().map_err(syntax)?;
    Ok((name, direction))
}

fn expect_word(parser: &mut Parser, word: &str) -> Result<()> {
    match parser.next_token().token {
        Token::Word(w) if w.value.eq_ignore_ascii_case(word) => Ok(()),
        other => Err(SluiceError::new(
            ErrorKind::Syntax,
            format!("syntax error: expected {word}, found: {other}"),
        )),
    }
}

fn parse_create_job(parser: &mut Parser, sink: bool) -> Result<CreateJob> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false).map_err(syntax)?;
    let options = if parser.parse_keyword(Keyword::WITH) {
        parse_options(parser)?
    } else if sink {
        return Err(SluiceError::new(
            ErrorKind::Syntax,
            format!(
                "syntax error: CREATE SINK {name} needs WITH (connector = '...', ...) AS query, found: {}",
                parser.peek_token()
            ),
        ));
    } else {
        BTreeMap::new()
    };
    if !parser.parse_keyword(Keyword::AS) {
        return Err(SluiceError::new(
            ErrorKind::Syntax,
            format!(
                "syntax error: expected AS query after {name}, found: {}",
                parser.peek_token()
            ),
        ));
    }
    let query = parser.parse_query().map_err(syntax)?;
    Ok(CreateJob {
        name,
        if_not_exists,
        options,
        query,
    })
}

fn parse_create_stream(parser: &mut Parser) -> Result<CreateStream> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false).map_err(syntax)?;
    let mut watermark = None;
    let mut columns = Vec::new();
    let mut metadata = BTreeMap::new();
    if parser.consume_token(&Token::LParen) {
        loop {
            if peek_word(parser, 0).as_deref() == Some("WATERMARK") {
                if watermark.is_some() {
                    return Err(SluiceError::new(ErrorKind::Syntax, "a stream has one WATERMARK"));
                }
                parser.next_token();
                if !parser.parse_keyword(Keyword::FOR) {
                    return Err(SluiceError::new(
                        ErrorKind::Syntax,
                        format!(
                            "syntax error: expected WATERMARK FOR column AS expression, found: {}",
                            parser.peek_token()
                        ),
                    ));
                }
                let col = column_name(&parser.parse_identifier().map_err(syntax)?);
                if !parser.parse_keyword(Keyword::AS) {
                    return Err(SluiceError::new(
                        ErrorKind::Syntax,
                        format!(
                            "syntax error: expected AS after WATERMARK FOR {col}, found: {}",
                            parser.peek_token()
                        ),
                    ));
                }
                let expr = parser.parse_expr().map_err(syntax)?;
                watermark = Some((col, Box::new(expr)));
            } else {
                let column = parser.parse_column_def().map_err(syntax)?;
                if peek_word(parser, 0).as_deref() == Some("METADATA") {
                    parser.next_token();
                    let key = if parser.parse_keyword(Keyword::FROM) {
                        parser.parse_literal_string().map_err(syntax)?
                    } else {
                        column_name(&column.name)
                    };
                    // Flink's VIRTUAL (not written by sinks): every metadata
                    // column of a stream is read-only here.
                    let _ = parser.parse_keyword(Keyword::VIRTUAL);
                    metadata.insert(column_name(&column.name), key);
                }
                columns.push(column);
            }
            if parser.consume_token(&Token::Comma) {
                continue;
            }
            parser.expect_token(&Token::RParen).map_err(syntax)?;
            break;
        }
    }
    if !parser.parse_keyword(Keyword::WITH) {
        return Err(SluiceError::new(
            ErrorKind::Syntax,
            format!(
                "syntax error: CREATE STREAM {name} needs WITH (connector = '...', ...), found: {}",
                parser.peek_token()
            ),
        ));
    }
    let options = parse_options(parser)?;
    Ok(CreateStream {
        name,
        if_not_exists,
        options,
        watermark,
        columns,
        metadata,
    })
}

fn parse_options(parser: &mut Parser) -> Result<BTreeMap<String, String>> {
    parser.expect_token(&Token::LParen).map_err(syntax)?;
    let mut options = BTreeMap::new();
    loop {
        let key = match parser.next_token().token {
            Token::Word(w) => w.value.to_ascii_lowercase(),
            Token::SingleQuotedString(s) => s.to_ascii_lowercase(),
            other => {
                return Err(SluiceError::new(
                    ErrorKind::Syntax,
                    format!("syntax error: expected an option name, found: {other}"),
                ));
            }
        };
        parser.expect_token(&Token::Eq).map_err(syntax)?;
        let value = match parser.next_token().token {
            Token::SingleQuotedString(s) => s,
            Token::Number(n, _) => n,
            // `key = SECRET name`: a reference to a secret, resolved when
            // the options are used.
            Token::Word(w)
                if w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("SECRET")
                    && matches!(parser.peek_token().token, Token::Word(_)) =>
            {
                let name = parser.parse_object_name(false).map_err(syntax)?;
                crate::secrets::make_reference(&normalize_name(&name))
            }
            Token::Word(w) => w.value,
            other => {
                return Err(SluiceError::new(
                    ErrorKind::Syntax,
                    format!("syntax error: expected a value for option '{key}', found: {other}"),
                ));
            }
        };
        if options.insert(key.clone(), value).is_some() {
            return Err(SluiceError::invalid_parameter(format!(
                "option '{key}' is given twice"
            )));
        }
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen).map_err(syntax)?;
        break;
    }
    Ok(options)
}

#[cfg(test)]
mod tests {

    #[test]
    fn array_literals_are_read_as_postgres_reads_them() {
        use super::array_elements;
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            array_elements(r#"{"north","east"}"#),
            Some(vec![s("north"), s("east")])
        );
        assert_eq!(
            array_elements(r#"{ a , "b, c" ,NULL,"NULL","q\"uote" }"#),
            Some(vec![s("a"), s("b, c"), None, s("NULL"), s("q\"uote")])
        );
        assert_eq!(array_elements("{}"), Some(vec![]));
        assert_eq!(array_elements("{1,2,3}"), Some(vec![s("1"), s("2"), s("3")]));
        assert_eq!(array_elements("{{1,2},{3,4}}"), None);
        assert_eq!(array_elements(r#"{"open"#), None);
    }

    #[test]
    fn external_table_options_can_name_secrets() {
        let sql = "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION 'x' OPTIONS \
                   ('format.delimiter' SECRET d, 'secret' 'v', s3.region SECRET \"My\", k 'SECRET')";
        let Ok(mut parsed) = parse(sql) else {
            panic!("{sql}")
        };
        let Some(Statement::DataFusion(DFStatement::CreateExternalTable(c))) = parsed.pop() else {
            panic!("not a CREATE EXTERNAL TABLE")
        };
        let options: Vec<(String, String)> = c
            .options
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        let quoted = |s: String| format!("'{s}'");
        assert_eq!(
            options,
            [
                (
                    "format.delimiter".to_string(),
                    quoted(crate::secrets::make_reference("d"))
                ),
                ("secret".to_string(), "'v'".to_string()),
                (
                    "s3.region".to_string(),
                    quoted(crate::secrets::make_reference("My"))
                ),
                ("k".to_string(), "'SECRET'".to_string()),
            ]
        );
        // Text without a SECRET value is parsed as written.
        assert!(secret_option_tokens("SELECT 'secret'", &PostgreSqlDialect {}).is_none());
    }

    #[test]
    fn deep_statements_are_refused_without_overflowing_the_stack() {
        // On a thread with a small stack, as a runtime worker has.
        let run = |sql: String| {
            std::thread::Builder::new()
                .stack_size(2 << 20)
                .spawn(move || parse(&sql).map(|_| ()).map_err(|e| e.kind()))
                .unwrap()
                .join()
                .unwrap()
        };
        let chain = |n: usize, op: &str| format!("SELECT 1{}", format!(" {op} 1").repeat(n));
        assert_eq!(run(chain(500, "+")), Ok(()));
        assert_eq!(run(chain(2_000, "+")), Err(ErrorKind::StatementTooComplex));
        assert_eq!(run(chain(200_000, "||")), Err(ErrorKind::StatementTooComplex));
        assert_eq!(run(chain(100_000, "AND")), Err(ErrorKind::StatementTooComplex));
        let unions = |n: usize| vec!["SELECT 1"; n].join(" UNION ALL ");
        assert_eq!(run(unions(100)), Ok(()));
        assert_eq!(run(unions(5_000)), Err(ErrorKind::StatementTooComplex));
        assert_eq!(
            run(format!("SELECT '{}'", "x".repeat(MAX_STATEMENT_BYTES))),
            Err(ErrorKind::ProgramLimitExceeded)
        );
        // Inside a continuous query too.
        let sink = format!(
            "CREATE SINK s WITH (connector = 'blackhole') AS {}",
            chain(3_000, "-")
        );
        assert_eq!(run(sink), Err(ErrorKind::StatementTooComplex));
    }

    use super::*;

    #[test]
    fn as_of_becomes_a_table_function_call() {
        let r = rewrite_as_of("SELECT * FROM page_views AS OF VERSION 12 WHERE x = 1").unwrap();
        assert_eq!(
            r,
            "SELECT * FROM sluice_as_of('page_views', 12) AS page_views WHERE x = 1"
        );
        let r = rewrite_as_of("select count(*) from Views as of timestamp '2026-11-22 10:00:00' v").unwrap();
        assert_eq!(
            r,
            "select count(*) from sluice_as_of('views', '2026-11-22 10:00:00') v"
        );
        let r = rewrite_as_of("SELECT 'as of version 3' FROM t AS OF VERSION 3 AS x, u").unwrap();
        assert_eq!(r, "SELECT 'as of version 3' FROM sluice_as_of('t', 3) AS x, u");
        let r = rewrite_as_of("SELECT * FROM a.\"B\" AS OF VERSION 0\n;").unwrap();
        assert_eq!(r, "SELECT * FROM sluice_as_of('B', 0) AS \"B\"\n;");
        // FOR SYSTEM_TIME AS OF: a time is time travel, a column a
        // temporal join.
        let r =
            rewrite_as_of("SELECT * FROM t FOR SYSTEM_TIME AS OF TIMESTAMP '2026-11-22 10:00:00'").unwrap();
        assert_eq!(r, "SELECT * FROM sluice_as_of('t', '2026-11-22 10:00:00') AS t");
        let r = rewrite_as_of(
            "SELECT * FROM orders o JOIN Rates FOR SYSTEM_TIME AS OF o.Order_Time AS r ON o.c = r.c",
        )
        .unwrap();
        assert_eq!(
            r,
            "SELECT * FROM orders o JOIN sluice_versions('rates', 'order_time', 'o') AS r ON o.c = r.c"
        );
        let r = rewrite_as_of("SELECT * FROM o LEFT JOIN s.rates for system_time as of ts ON o.c = rates.c")
            .unwrap();
        assert_eq!(
            r,
            "SELECT * FROM o LEFT JOIN sluice_versions('rates', 'ts') AS rates ON o.c = rates.c"
        );
        assert!(rewrite_as_of("SELECT * FROM o JOIN r FOR SYSTEM_TIME AS OF a.b.c ON true").is_err());
        let r = rewrite_as_of("SELECT * FROM o JOIN dim FOR SYSTEM_TIME AS OF PROCTIME() d ON o.c = d.c")
            .unwrap();
        assert_eq!(
            r,
            "SELECT * FROM o JOIN sluice_versions('dim', NULL) d ON o.c = d.c"
        );
        // Untouched: no AS OF, or AS OF something else.
        assert!(matches!(
            rewrite_as_of("SELECT 1 AS one").unwrap(),
            std::borrow::Cow::Borrowed(_)
        ));
        let e = rewrite_as_of("SELECT * FROM t AS OF VERSION 'x'").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Syntax);
    }

    #[test]
    fn asof_joins_become_left_temporal_joins() {
        let sql = |stmt: &Statement| match stmt {
            Statement::CreateMaterializedView(c) => c.query.to_string(),
            other => panic!("{other:?}"),
        };
        let stmts = parse(
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM trades t ASOF JOIN Quotes q \
             MATCH_CONDITION (t.ts >= q.ts) ON t.sym = q.sym",
        )
        .unwrap();
        assert_eq!(
            sql(&stmts[0]),
            "SELECT * FROM trades t LEFT OUTER JOIN sluice_versions('quotes', 'ts', 't', 'ts') AS \"q\" ON t.sym = q.sym"
        );
        // Mirrored, unqualified, no alias.
        let stmts = parse(
            "CREATE MATERIALIZED VIEW v AS SELECT * FROM trades ASOF JOIN quotes \
             MATCH_CONDITION (quotes.qt <= tt) USING (sym)",
        )
        .unwrap();
        assert_eq!(
            sql(&stmts[0]),
            "SELECT * FROM trades LEFT OUTER JOIN sluice_versions('quotes', 'tt', NULL, 'qt') AS \"quotes\" USING(sym)"
        );
        for (bad, says) in [
            (
                "MATCH_CONDITION (t.ts > q.ts) ON t.sym = q.sym",
                "only MATCH_CONDITION (left.time >= right.time)",
            ),
            (
                "MATCH_CONDITION (q.ts <= t.ts + 1) ON t.sym = q.sym",
                "compares two columns",
            ),
            ("MATCH_CONDITION (t.ts >= q.ts)", "needs ON left.key = right.key"),
            (
                "MATCH_CONDITION (q.ts >= t.ts) ON t.sym = q.sym",
                "the left input's time first",
            ),
        ] {
            let err = parse(&format!("SELECT * FROM trades t ASOF JOIN quotes q {bad}")).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::NotSupported, "{bad}");
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn sluice_and_datafusion_statements_mix() {
        let stmts = parse(
            "CREATE STREAM bid WITH (connector = 'nexmark', 'nexmark.table' = 'bid', 'events.max' = 1000); \
             SELECT 1; SHOW STREAMS; DROP STREAM IF EXISTS bid",
        )
        .unwrap();
        assert_eq!(stmts.len(), 4);
        let Statement::CreateStream(c) = &stmts[0] else {
            panic!("{stmts:?}")
        };
        assert_eq!(c.options.get("nexmark.table").map(String::as_str), Some("bid"));
        assert_eq!(c.options.get("events.max").map(String::as_str), Some("1000"));
        assert!(matches!(stmts[1], Statement::DataFusion(_)));
        assert_eq!(stmts[2], Statement::ShowStreams);
        assert!(matches!(&stmts[3], Statement::DropStream { if_exists: true, .. }));
        // Rendering round-trips.
        let again = parse(&c.to_string()).unwrap();
        assert_eq!(again, vec![stmts[0].clone()]);
    }

    #[test]
    fn create_stream_errors_say_what_is_expected() {
        let e = parse("CREATE STREAM s").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Syntax);
        assert!(e.to_string().contains("needs WITH"), "{e}");
        let e = parse("CREATE STREAM s WITH (a = 'x', a = 'y')").unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
        let e = parse("SELECT 1 SELECT 2").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Syntax);
    }
}
