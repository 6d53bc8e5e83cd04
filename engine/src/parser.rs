//! Sluice's SQL dialect: DataFusion's parser (Postgres dialect), plus the
//! statements that are Sluice's own (`CREATE STREAM`, `DROP STREAM`,
//! `SHOW STREAMS`). Statements are split by DataFusion's parser loop; at
//! each statement start, Sluice looks at the first keywords and parses its
//! own statements itself.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::error::DataFusionError;
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::ObjectName;
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
}

/// `CREATE STREAM`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateStream {
    pub name: ObjectName,
    pub if_not_exists: bool,
    /// Option keys as written (quotes removed), lower-cased.
    pub options: BTreeMap<String, String>,
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
        let opts: Vec<String> = self
            .options
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
            .collect();
        write!(f, " WITH ({})", opts.join(", "))
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

/// Parses SQL text into statements.
pub fn parse(sql: &str) -> Result<Vec<Statement>> {
    let dialect = PostgreSqlDialect {};
    let mut df = DFParserBuilder::new(sql).with_dialect(&dialect).build()?;
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
        let first = peek_word(&df.parser, 0);
        let second = peek_word(&df.parser, 1);
        let statement = match (first.as_deref(), second.as_deref()) {
            (Some("CREATE"), Some("STREAM")) => {
                df.parser.next_token();
                df.parser.next_token();
                Statement::CreateStream(parse_create_stream(&mut df.parser)?)
            }
            (Some("DROP"), Some("STREAM")) => {
                df.parser.next_token();
                df.parser.next_token();
                let if_exists = df.parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
                let name = df.parser.parse_object_name(false).map_err(syntax)?;
                Statement::DropStream { name, if_exists }
            }
            (Some("SHOW"), Some("STREAMS")) => {
                df.parser.next_token();
                df.parser.next_token();
                Statement::ShowStreams
            }
            _ => Statement::DataFusion(df.parse_statement()?),
        };
        out.push(statement);
        expecting_delimiter = true;
    }
    Ok(out)
}

fn parse_create_stream(parser: &mut Parser) -> Result<CreateStream> {
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false).map_err(syntax)?;
    if parser.peek_token() == Token::LParen {
        return Err(SluiceError::not_supported(
            "declared columns in CREATE STREAM are not supported yet: the built-in connectors \
             define their own schema; write CREATE STREAM name WITH (connector = '...', ...)",
        ));
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
    Ok(CreateStream {
        name,
        if_not_exists,
        options,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
