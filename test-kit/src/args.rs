//! Command lines of the example programs: one parser (clap's derive) and one style for every
//! binary. `--help` prints the help to stdout with status 0; any bad argument prints the error
//! and the usage line to stderr with status [`EXIT_USAGE`].
//!
//! Numbers go through [`number`] and [`number_in`], which say what was expected (a negative
//! count is "not a whole number of at least 1", not clap's "invalid digit found in string").

use std::ffi::OsString;
use std::fmt::Display;
use std::str::FromStr;

use clap::error::ErrorKind;
use clap::Parser;

use crate::exit::EXIT_USAGE;

/// The process's command line, parsed as `T`; exits on `--help` (status 0) and on any error
/// (status [`EXIT_USAGE`], with the usage).
pub fn parse<T: Parser>() -> T {
    parse_from(std::env::args_os())
}

/// [`parse`] of `args` (the first item is the program name).
pub fn parse_from<T, I, S>(args: I) -> T
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    match try_parse_from(args) {
        Ok(t) => t,
        Err(Exit::Help(text)) => {
            print!("{text}");
            std::process::exit(0)
        }
        Err(Exit::Usage(text)) => {
            eprint!("{text}");
            std::process::exit(EXIT_USAGE.into())
        }
    }
}

/// Why parsing did not give a command: help was asked for, or the arguments were bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `--help` (or `--version`): the text to print to stdout; the program exits 0.
    Help(String),
    /// A bad argument: the error and the usage, for stderr; the program exits
    /// [`EXIT_USAGE`].
    Usage(String),
}

/// Parses `args` as `T`, returning what [`parse_from`] would print instead of exiting.
pub fn try_parse_from<T, I, S>(args: I) -> Result<T, Exit>
where
    T: Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    T::try_parse_from(args).map_err(|e| match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Exit::Help(e.to_string()),
        _ => {
            let mut text = e.to_string();
            // clap names the usage for some errors only; every bad argument gets it here.
            if !text.contains("Usage:") {
                let usage = T::command().render_usage().to_string();
                text = format!("{}\n\n{usage}\n", text.trim_end());
            }
            Exit::Usage(text)
        }
    })
}

/// A value parser for a number of type `T` (`value_parser = number::<u64>`), with a message
/// that says what was expected.
pub fn number<T: FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a {}, not {s:?}", kind_of::<T>()))
}

/// A value parser for a number in `lo..=hi` (`value_parser = number_in(1, 64)`).
pub fn number_in<T>(lo: T, hi: T) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync
where
    T: FromStr + PartialOrd + Display + Copy + Send + Sync + 'static,
{
    move |s| {
        let v: T = s.trim().parse().map_err(|_| {
            format!(
                "expected a {} between {lo} and {hi}, not {s:?}",
                kind_of::<T>()
            )
        })?;
        if v < lo || v > hi {
            return Err(format!("must be between {lo} and {hi}, not {v}"));
        }
        Ok(v)
    }
}

fn kind_of<T>() -> &'static str {
    match std::any::type_name::<T>().as_bytes().first() {
        Some(b'u') | Some(b'i') => "whole number",
        _ => "number",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command line like the examples'.
    #[derive(Parser, Debug)]
    #[command(name = "demo", allow_negative_numbers = true)]
    struct Demo {
        /// Pages.
        #[arg(long, value_parser = number_in(1usize, 64), default_value_t = 4)]
        pages: usize,
        /// Rate.
        #[arg(long, value_parser = number::<f64>)]
        rate: Option<f64>,
    }

    fn parse(args: &[&str]) -> Result<Demo, Exit> {
        try_parse_from(std::iter::once("demo").chain(args.iter().copied()))
    }

    fn usage(args: &[&str]) -> String {
        match parse(args) {
            Err(Exit::Usage(text)) => text,
            other => panic!("{args:?} gave {other:?}"),
        }
    }

    #[test]
    fn values_defaults_and_ranges() {
        let d = parse(&["--pages", "64", "--rate", "2.5"]).unwrap();
        assert_eq!((d.pages, d.rate), (64, Some(2.5)));
        assert_eq!(parse(&[]).unwrap().pages, 4);
        let t = usage(&["--pages", "65"]);
        assert!(t.contains("between 1 and 64, not 65"), "{t}");
        assert!(t.contains("Usage: demo"), "{t}");
    }

    #[test]
    fn negative_and_junk_numbers_say_what_was_expected() {
        let t = usage(&["--pages", "-5"]);
        assert!(
            t.contains("expected a whole number between 1 and 64, not \"-5\""),
            "{t}"
        );
        assert!(!t.contains("invalid digit"), "{t}");
        let t = usage(&["--rate", "fast"]);
        assert!(t.contains("expected a number, not \"fast\""), "{t}");
    }

    #[test]
    fn unknown_arguments_and_help() {
        let t = usage(&["--bogus"]);
        assert!(t.contains("--bogus") && t.contains("Usage: demo"), "{t}");
        let t = usage(&["extra"]);
        assert!(t.contains("extra") && t.contains("Usage: demo"), "{t}");
        match parse(&["--help"]) {
            Err(Exit::Help(text)) => assert!(text.contains("--pages"), "{text}"),
            other => panic!("{other:?}"),
        }
    }
}
