//! Every rewrite of what crosses the proxy, in one place, for every transport: feature
//! filtering (starttls, compression, `*-PLUS`, channel binding), XEP-0198 `location` stripping,
//! and namespace normalisation of client stanzas.
