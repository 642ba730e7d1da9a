//! METEOR's `-norm` normalizer for English (a port of its Moses-style tokenizer), followed by
//! Java's lower-casing. Every regular-expression pass of the original is reproduced as a
//! left-to-right, non-overlapping scan, which is what `Matcher.replaceAll` does.

use std::collections::HashMap;

/// How a non-breaking prefix keeps its period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nbp {
    /// Always (`Mr.`).
    Any,
    /// Only before a number (`No. 5`).
    NumericOnly,
}

/// The letters of METEOR's `alpha` class: ASCII, Latin-1/Latin Extended-A and Cyrillic ranges.
fn is_alpha(c: char) -> bool {
    c.is_ascii_alphabetic()
        || matches!(c,
            '\u{0160}' | '\u{017D}' | '\u{0161}' | '\u{017E}' | '\u{0178}'
            | '\u{00C0}'..='\u{00D6}' | '\u{00D8}'..='\u{00F6}' | '\u{00F8}'..='\u{017E}'
            | '\u{0400}'..='\u{04FF}' | '\u{0500}'..='\u{0527}' | '\u{A640}'..='\u{A66E}'
            | '\u{A67E}'..='\u{A697}' | '\u{1D00}'..='\u{1D7F}')
}

fn is_digit(c: char) -> bool {
    c.is_ascii_digit()
}

fn is_alnum(c: char) -> bool {
    is_alpha(c) || is_digit(c)
}

/// Java regex `\s`.
fn is_java_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r')
}

/// `java.util.StringTokenizer`'s default delimiters.
pub(crate) fn is_tok_delim(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{0C}')
}

/// The characters of METEOR's whitespace-normalization class.
fn is_meteor_white(c: char) -> bool {
    matches!(
        c,
        ' ' | '\u{2000}'..='\u{200A}' | '\u{202F}' | '\u{205F}' | '\u{3000}' | '\u{00A0}'
    )
}

/// Replaces every non-overlapping `a m b` (one char each) by `rep(a, m, b)`.
fn triples(
    v: &[char],
    p1: impl Fn(char) -> bool,
    mid: impl Fn(char) -> bool,
    p3: impl Fn(char) -> bool,
    rep: impl Fn(char, char, char, &mut Vec<char>),
) -> Vec<char> {
    let mut out = Vec::with_capacity(v.len() + 8);
    let mut i = 0;
    while i < v.len() {
        if i + 2 < v.len() && p1(v[i]) && mid(v[i + 1]) && p3(v[i + 2]) {
            rep(v[i], v[i + 1], v[i + 2], &mut out);
            i += 3;
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn push_str(out: &mut Vec<char>, s: &str) {
    out.extend(s.chars());
}

/// `String.replace(from, to)`: literal, non-overlapping, left to right.
fn replace_lit(v: &[char], from: &str, to: &str) -> Vec<char> {
    let f: Vec<char> = from.chars().collect();
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if i + f.len() <= v.len() && v[i..i + f.len()] == f[..] {
            push_str(&mut out, to);
            i += f.len();
        } else {
            out.push(v[i]);
            i += 1;
        }
    }
    out
}

fn contains(v: &[char], s: &str) -> bool {
    let f: Vec<char> = s.chars().collect();
    v.windows(f.len()).any(|w| w == &f[..])
}

/// Normalizes one line as `Normalizer.normalizeLine(line, LANG_EN, true)` and lower-cases it.
pub(crate) fn normalize(line: &str, nbp: &HashMap<String, Nbp>) -> String {
    if line.is_empty() {
        return String::new();
    }
    let mut v: Vec<char> = Vec::with_capacity(line.len() + 2);
    v.push(' ');
    v.extend(line.chars());
    v.push(' ');

    // Separate everything but alphanumerics, whitespace and . ' ` , - ‘ ’
    let mut w = Vec::with_capacity(v.len() + 16);
    for &c in &v {
        if is_alnum(c)
            || is_java_space(c)
            || matches!(c, '.' | '\'' | '`' | ',' | '-' | '\u{2018}' | '\u{2019}')
        {
            w.push(c);
        } else {
            w.push(' ');
            w.push(c);
            w.push(' ');
        }
    }
    v = w;

    // Escape multiple dots.
    if v.windows(2).any(|p| p == ['.', '.']) {
        let mut w = Vec::with_capacity(v.len() + 16);
        let mut i = 0;
        while i < v.len() {
            if v[i] == '.' && i + 1 < v.len() && v[i + 1] == '.' {
                let mut j = i + 1;
                while j < v.len() && v[j] == '.' {
                    j += 1;
                }
                push_str(&mut w, " DOTMULTI");
                w.extend_from_slice(&v[i + 1..j]);
                i = j;
            } else {
                w.push(v[i]);
                i += 1;
            }
        }
        v = w;
        while contains(&v, "DOTMULTI.") {
            // DOTMULTI\.([^\.]) -> "DOTDOTMULTI $1"
            let pat: Vec<char> = "DOTMULTI.".chars().collect();
            let mut w = Vec::with_capacity(v.len() + 16);
            let mut i = 0;
            while i < v.len() {
                if i + pat.len() < v.len()
                    && v[i..i + pat.len()] == pat[..]
                    && v[i + pat.len()] != '.'
                {
                    push_str(&mut w, "DOTDOTMULTI ");
                    w.push(v[i + pat.len()]);
                    i += pat.len() + 1;
                } else {
                    w.push(v[i]);
                    i += 1;
                }
            }
            v = replace_lit(&w, "DOTMULTI.", "DOTDOTMULTI");
        }
    }

    // Separate commas except within numbers.
    let comma = |a: char, _m: char, b: char, o: &mut Vec<char>| {
        o.push(a);
        push_str(o, " , ");
        o.push(b);
    };
    v = triples(&v, |c| !is_digit(c), |c| c == ',', |c| !is_digit(c), comma);
    v = triples(&v, is_digit, |c| c == ',', |c| !is_digit(c), comma);
    v = triples(&v, |c| !is_digit(c), |c| c == ',', is_digit, comma);

    // Quotes.
    for c in &mut v {
        if matches!(*c, '`' | '\u{2018}' | '\u{2019}') {
            *c = '\'';
        }
    }
    {
        let mut w = Vec::with_capacity(v.len() + 8);
        let mut i = 0;
        while i < v.len() {
            if matches!(v[i], '\u{201C}' | '\u{201D}') {
                push_str(&mut w, " \" ");
                i += 1;
            } else if v[i] == '\'' && i + 1 < v.len() && v[i + 1] == '\'' {
                push_str(&mut w, " \" ");
                i += 2;
            } else {
                w.push(v[i]);
                i += 1;
            }
        }
        v = w;
    }

    // Dashes.
    for c in &mut v {
        if *c == '\u{2013}' {
            *c = '-';
        }
    }
    v = replace_lit(&v, "--", "-");
    v = triples(
        &v,
        |c| is_alnum(c) || c == '.',
        |c| c == '-',
        is_alnum,
        |a, _, b, o| {
            o.push(a);
            o.push(' ');
            o.push(b);
        },
    );

    // English contractions split to the right.
    let spaced = |a: char, _m: char, b: char, o: &mut Vec<char>| {
        o.push(a);
        push_str(o, " ' ");
        o.push(b);
    };
    let joined = |a: char, _m: char, b: char, o: &mut Vec<char>| {
        o.push(a);
        push_str(o, " '");
        o.push(b);
    };
    let apos = |c: char| c == '\'';
    v = triples(&v, |c| !is_alpha(c), apos, |c| !is_alpha(c), spaced);
    v = triples(&v, |c| !is_alpha(c) && !is_digit(c), apos, is_alpha, spaced);
    v = triples(&v, is_alpha, apos, |c| !is_alpha(c), spaced);
    v = triples(&v, is_alpha, apos, is_alpha, joined);
    v = triples(&v, is_digit, apos, |c| c == 's', joined);

    // Rebuild word by word, splitting final periods unless the word is a non-breaking prefix.
    let s: String = v.iter().collect();
    let words: Vec<&str> = s.split(is_tok_delim).filter(|t| !t.is_empty()).collect();
    let mut sb = String::with_capacity(s.len() + 8);
    for (i, word) in words.iter().enumerate() {
        let wlen = word.chars().count();
        if wlen > 1 && word.ends_with('.') {
            let pre = &word[..word.len() - 1];
            let ty = nbp.get(pre).copied();
            let next = words.get(i + 1);
            if pre.contains('.') && pre.chars().any(is_alpha) {
                sb.push_str(&word.replace('.', ""));
            } else if ty == Some(Nbp::Any)
                // Followed by a lower-case word (catches unlisted prefixes such as "Inc.").
                || next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_lowercase()))
                // Numeric-only prefixes before a number ("No. 5").
                || (ty == Some(Nbp::NumericOnly)
                    && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit())))
            {
                sb.push_str(word);
            } else {
                sb.push_str(pre);
                sb.push_str(" .");
            }
        } else {
            sb.push_str(word);
        }
        sb.push(' ');
    }

    // Unescape multiple dots.
    let mut out = sb;
    while out.contains("DOTDOTMULTI") {
        out = out.replace("DOTDOTMULTI", "DOTMULTI.");
    }
    out = out.replace("DOTMULTI", ".");

    // Normalize whitespace, trim (Java trim: chars <= U+0020), lower-case.
    let mut res = String::with_capacity(out.len());
    let mut in_white = false;
    for c in out.chars() {
        if is_meteor_white(c) {
            if !in_white {
                res.push(' ');
            }
            in_white = true;
        } else {
            res.push(c);
            in_white = false;
        }
    }
    res.trim_matches(|c: char| c <= ' ').to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values are the output of the jar's `edu.cmu.meteor.util.Normalizer en true`.
    #[test]
    fn matches_the_jar_normalizer() {
        let mut nbp = HashMap::new();
        nbp.insert("Mr".to_string(), Nbp::Any);
        assert_eq!(normalize("a girl 's t-shirt", &nbp), "a girl ' s t shirt");
        assert_eq!(normalize("does n't", &nbp), "does n 't");
        assert_eq!(normalize("", &nbp), "");
        assert_eq!(normalize("1,000 a,b", &nbp), "1,000 a , b");
        assert_eq!(
            normalize("u.s. flag -lrb- x -rrb- mr. smith", &nbp),
            "us flag -lrb- x -rrb- mr. smith"
        );
        assert_eq!(normalize("end.", &nbp), "end .");
        assert_eq!(normalize("wait... what", &nbp), "wait ... what");
    }
}
