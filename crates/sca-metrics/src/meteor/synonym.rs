//! WordNet synonym sets as METEOR 1.5's `SynonymDictionary` uses them: exact synset lookup plus
//! a base form from the irregular-form exceptions or WordNet's suffix rules ("morphy").

use crate::ngram::FxHashMap;

/// Synsets per word (sorted, deduplicated) and irregular forms -> base forms.
#[derive(Default)]
pub(crate) struct Synonyms {
    synsets: FxHashMap<String, Vec<u32>>,
    bases: FxHashMap<String, Vec<String>>,
}

const SUFX: [&str; 20] = [
    "s", "ses", "xes", "zes", "ches", "shes", "men", "ies", // nouns
    "s", "ies", "es", "es", "ed", "ed", "ing", "ing", // verbs
    "er", "est", "er", "est", // adjectives
];
const ADDR: [&str; 20] = [
    "", "s", "x", "z", "ch", "sh", "man", "y", // nouns
    "", "y", "e", "", "e", "", "e", "", // verbs
    "", "", "e", "e", // adjectives
];

impl Synonyms {
    /// Parses `english.exceptions` and `english.synsets` (pairs of lines each).
    pub(crate) fn parse(exceptions: &str, synsets: &str) -> Result<Self, String> {
        let mut s = Synonyms::default();
        let mut lines = exceptions.lines();
        while let Some(base) = lines.next() {
            let forms = lines.next().unwrap_or("");
            for form in forms
                .split(crate::meteor::normalize::is_tok_delim)
                .filter(|t| !t.is_empty())
            {
                s.bases
                    .entry(form.to_string())
                    .or_default()
                    .push(base.to_string());
            }
        }
        let mut lines = synsets.lines();
        let mut lineno = 0usize;
        while let Some(word) = lines.next() {
            lineno += 2;
            let ids = lines.next().unwrap_or("");
            let mut set = Vec::new();
            for t in ids
                .split(crate::meteor::normalize::is_tok_delim)
                .filter(|t| !t.is_empty())
            {
                set.push(
                    t.parse::<u32>()
                        .map_err(|_| format!("line {lineno}: bad synset id {t:?}"))?,
                );
            }
            set.sort_unstable();
            set.dedup();
            s.synsets.insert(word.to_string(), set);
        }
        Ok(s)
    }

    fn synsets_of(&self, word: &str) -> &[u32] {
        self.synsets.get(word).map_or(&[], |v| v.as_slice())
    }

    /// WordNet's morphological base form by suffix rules, or "" when none is in the dictionary.
    fn morph(&self, word: &str) -> String {
        // The original computes an ending "ful" but never uses a matching rule for it, so the
        // result for such words is unaffected; keep the same control flow.
        let end = if word.ends_with("ful") { "ful" } else { "" };
        if word.ends_with("ss") || word.chars().count() <= 2 {
            return word.to_string();
        }
        for (suf, add) in SUFX.iter().zip(ADDR) {
            if let Some(stem) = word.strip_suffix(suf) {
                let cand = format!("{stem}{add}");
                if self.synsets.contains_key(&cand) {
                    return cand + end;
                }
            }
        }
        String::new()
    }

    /// Synsets of the word itself plus those of its base form(s), sorted and deduplicated.
    pub(crate) fn all_synsets(&self, word: &str) -> Vec<u32> {
        let mut set: Vec<u32> = self.synsets_of(word).to_vec();
        if let Some(bases) = self.bases.get(word) {
            for b in bases {
                set.extend_from_slice(self.synsets_of(b));
            }
        } else {
            let m = self.morph(word);
            set.extend_from_slice(self.synsets_of(&m));
        }
        set.sort_unstable();
        set.dedup();
        set
    }
}

/// Whether two sorted sets intersect.
pub(crate) fn intersects(a: &[u32], b: &[u32]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}
