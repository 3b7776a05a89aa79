//! Finding where to connect: static route → SRV (`_xmpps-client._tcp` direct TLS and
//! `_xmpp-client._tcp` STARTTLS, merged in priority/weight order) → the domain on port 5222.
