// How the browser tests start Debian's Chromium: headless, and quiet on a machine whose only
// network is loopback (without the background-networking flags Chromium keeps trying, and
// failing, to reach Google's hosts).
export const CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
];
