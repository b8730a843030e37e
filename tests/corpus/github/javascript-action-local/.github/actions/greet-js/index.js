const fs = require("fs");
const os = require("os");

const who = process.env["INPUT_WHO-TO-GREET"];
const greeting = process.env["INPUT_GREETING"];
const message = `${greeting}, ${who}!`;
console.log(message);
console.log(`read from INPUT_WHO-TO-GREET: ${who}`);
fs.appendFileSync(process.env.GITHUB_OUTPUT, `message=${message}${os.EOL}`);
fs.appendFileSync(process.env.GITHUB_STATE, `greeted=${who}${os.EOL}`);
