//! Caption metrics (in progress).
