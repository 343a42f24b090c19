// highlight.js: small syntax highlighting for code blocks in messages.
//
// It runs in the browser only, on every <pre><code class="language-X"> of a message: the
// server-rendered transcript, finished answers and the blocks of an answer still streaming.
// Because one function highlights all of them, a streamed code block looks exactly like the
// same block after the page is reloaded. Without JavaScript code is shown plain (and readable).
//
// Each language is a list of [class, regex] rules tried left to right; the text between matches
// stays plain. Unterminated strings and comments run to the end, so an open block streams well.
// Output is built from text nodes and <span class="hl-*"> only: it cannot inject markup.

const words = (list) => `\\b(?:${list.split(' ').join('|')})\\b`;
const upperToo = (list) => `${list} ${list.toUpperCase()}`;
const LINE_START = '(?<=^|\\n)';

const DQ = '"(?:[^"\\\\\\n]|\\\\.)*"?';
const SQ = "'(?:[^'\\\\\\n]|\\\\.)*'?";
const BT = '`(?:[^`\\\\]|\\\\[\\s\\S])*`?';
const NUMBER = '\\b(?:0[xX][\\da-fA-F_]+|0[bB][01_]+|0[oO][0-7_]+|\\d[\\d_]*(?:\\.\\d[\\d_]*)?(?:[eE][+-]?\\d+)?)[a-zA-Z]*\\b';
const HASH_COMMENT = '#.*';
const SLASH_COMMENTS = '\\/\\/.*|\\/\\*[\\s\\S]*?(?:\\*\\/|$)';
const DEFINED = (kw) => `(?<=\\b(?:${kw})\\s+)[A-Za-z_$][\\w$]*`;

const C_LIKE_KEYWORDS = 'auto break case catch class const continue default delete do else enum explicit export ' +
  'extern final finally for friend goto if inline namespace new noexcept operator override private protected ' +
  'public register return sizeof static struct switch template this throw throws try typedef typename union ' +
  'using virtual volatile while abstract extends implements import instanceof interface package super ' +
  'synchronized transient var val fun when is in out object companion data sealed lateinit let func guard ' +
  'protocol extension where async await yield readonly ref base checked fixed lock params sealed get set';
const C_LIKE_TYPES = 'int long short char float double bool boolean void byte unsigned signed size_t string ' +
  'String Integer Long Double Boolean Object List Map Set Array Optional uint8_t int32_t int64_t uint32_t ' +
  'uint64_t std vector Any Int Unit';

const LANGUAGES = {
  python: [
    ['c', HASH_COMMENT],
    ['s', `[rRbBuUfF]{0,2}(?:"""[\\s\\S]*?(?:"""|$)|'''[\\s\\S]*?(?:'''|$)|${DQ}|${SQ})`],
    ['m', '@[\\w.]+'],
    ['f', DEFINED('def|class')],
    ['k', words('and as assert async await break class continue def del elif else except finally for from ' +
      'global if import in is lambda nonlocal not or pass raise return try while with yield match case')],
    ['l', words('True False None')],
    ['t', words('self cls print len range int str float list dict set tuple bool type isinstance open super ' +
      'enumerate zip map filter sorted min max sum any all abs repr object bytes Exception ValueError ' +
      'TypeError KeyError RuntimeError')],
    ['n', NUMBER],
  ],
  javascript: [
    ['c', SLASH_COMMENTS],
    ['s', `${DQ}|${SQ}|${BT}`],
    ['f', DEFINED('function|class')],
    ['k', words('break case catch class const continue debugger default delete do else export extends finally ' +
      'for function if import in instanceof let new of return super switch this throw try typeof var void ' +
      'while with yield async await static get set from as interface type enum implements private public ' +
      'protected readonly declare namespace abstract keyof')],
    ['l', words('true false null undefined NaN Infinity')],
    ['t', words('string number boolean any unknown never object Array Promise Map Set Object String Number ' +
      'Boolean Error JSON Math console window document')],
    ['n', NUMBER],
  ],
  json: [
    ['t', `${DQ}(?=\\s*:)`],
    ['s', DQ],
    ['l', words('true false null')],
    ['n', '-?\\d+(?:\\.\\d+)?(?:[eE][+-]?\\d+)?'],
  ],
  bash: [
    ['c', '(?<=^|\\s)#.*'],
    ['s', `${DQ}|${SQ}`],
    ['v', '\\$\\{[^}\\n]*\\}?|\\$[\\w@#?$!*-]'],
    ['k', words('if then else elif fi for while until do done case esac in function return export local ' +
      'readonly select time')],
    ['t', words('echo cd source set unset exit exec eval read printf test sudo make pip python python3 git ' +
      'curl npm apt apt-get cat grep sed awk ls rm cp mv mkdir')],
    ['n', '\\b\\d+\\b'],
  ],
  sql: [
    ['c', '--.*|\\/\\*[\\s\\S]*?(?:\\*\\/|$)'],
    ['s', SQ],
    ['k', words(upperToo('select from where insert into values update set delete create table alter drop ' +
      'index view join left right inner outer full cross on group by order having limit offset as and or ' +
      'not is in exists distinct union all primary key foreign references default unique check constraint ' +
      'begin commit rollback transaction case when then else end with returning like ilike between asc desc ' +
      'if replace'))],
    ['l', words(upperToo('null true false'))],
    ['t', words(upperToo('int integer bigint smallint serial bigserial text varchar char boolean date ' +
      'timestamp timestamptz numeric decimal real jsonb json uuid count sum avg min max coalesce now'))],
    ['n', NUMBER],
  ],
  go: [
    ['c', SLASH_COMMENTS],
    ['s', `${DQ}|${SQ}|\`[^\`]*\`?`],
    ['f', DEFINED('func|type')],
    ['k', words('break case chan const continue default defer else fallthrough for func go goto if import ' +
      'interface map package range return select struct switch type var')],
    ['l', words('true false nil iota')],
    ['t', words('int int8 int16 int32 int64 uint uint8 uint16 uint32 uint64 float32 float64 string bool ' +
      'byte rune error any make new len cap append panic recover')],
    ['n', NUMBER],
  ],
  rust: [
    ['c', SLASH_COMMENTS],
    ['s', `${DQ}|'(?:\\\\.|[^'\\\\\\n])'`],
    ['m', '\\b[a-z_]\\w*!|#!?\\[[^\\]\\n]*\\]?'],
    ['f', DEFINED('fn|struct|enum|trait|impl|mod')],
    ['k', words('as async await break const continue crate dyn else enum extern fn for if impl in let loop ' +
      'match mod move mut pub ref return self Self static struct super trait type unsafe use where while')],
    ['l', words('true false None Some Ok Err')],
    ['t', words('i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize f32 f64 bool char str String Vec ' +
      'Option Result Box Rc Arc HashMap')],
    ['n', NUMBER],
  ],
  clike: [
    ['c', SLASH_COMMENTS],
    ['s', `${DQ}|'(?:\\\\.|[^'\\\\\\n]){1,2}'`],
    ['m', `${LINE_START}[ \\t]*#[ \\t]*\\w+.*|@\\w+`],
    ['f', DEFINED('class|struct|interface|enum|fun|func')],
    ['k', words(C_LIKE_KEYWORDS)],
    ['l', words('true false null nullptr NULL nil')],
    ['t', words(C_LIKE_TYPES)],
    ['n', NUMBER],
  ],
  ruby: [
    ['c', HASH_COMMENT],
    ['s', `${DQ}|${SQ}|:[A-Za-z_]\\w*[?!]?`],
    ['f', DEFINED('def|class|module')],
    ['k', words('alias and begin break case class def defined do else elsif end ensure for if in module next ' +
      'not or redo rescue retry return self super then undef unless until when while yield require puts')],
    ['l', words('true false nil')],
    ['n', NUMBER],
  ],
  html: [
    ['c', '<!--[\\s\\S]*?(?:-->|$)'],
    ['k', '<\\/?[A-Za-z][\\w:.-]*|\\/?>'],
    ['t', '[\\w:-]+(?=\\s*=)'],
    ['s', '"[^"]*"?|\'[^\'\\n]*\'?'],
    ['l', '&[\\w#]+;'],
  ],
  css: [
    ['c', '\\/\\*[\\s\\S]*?(?:\\*\\/|$)'],
    ['s', `${DQ}|${SQ}`],
    ['k', '@[\\w-]+'],
    ['t', '[\\w-]+(?=\\s*:[^:])'],
    ['n', '#[\\da-fA-F]{3,8}\\b|-?\\b\\d+(?:\\.\\d+)?(?:%|[a-z]+)?'],
  ],
  yaml: [
    ['c', '(?<=^|\\s)#.*'],
    ['t', `${LINE_START}[ \\t-]*[\\w./-]+(?=[ \\t]*:(?:\\s|$))`],
    ['s', `${DQ}|${SQ}`],
    ['l', words('true false null yes no on off')],
    ['n', NUMBER],
  ],
  toml: [
    ['c', '(?<=^|\\s)[#;].*'],
    ['k', `${LINE_START}[ \\t]*\\[[^\\]\\n]*\\]?`],
    ['t', '[\\w.-]+(?=[ \\t]*=)'],
    ['s', `"""[\\s\\S]*?(?:"""|$)|${DQ}|${SQ}`],
    ['l', words('true false')],
    ['n', NUMBER],
  ],
  diff: [
    ['m', `${LINE_START}(?:@@.*|diff .*|index .*)`],
    ['i', `${LINE_START}\\+.*`],
    ['d', `${LINE_START}-.*`],
  ],
  dockerfile: [
    ['c', `${LINE_START}[ \\t]*#.*`],
    ['k', `${LINE_START}[ \\t]*${words('FROM RUN CMD COPY ADD ENV WORKDIR EXPOSE ENTRYPOINT ARG USER VOLUME LABEL ' +
      'HEALTHCHECK SHELL STOPSIGNAL ONBUILD AS')}`],
    ['s', `${DQ}|${SQ}`],
    ['v', '\\$\\{[^}\\n]*\\}?|\\$\\w+'],
  ],
};

const ALIASES = {
  py: 'python', python3: 'python', py3: 'python', js: 'javascript', jsx: 'javascript', mjs: 'javascript',
  cjs: 'javascript', ts: 'javascript', tsx: 'javascript', typescript: 'javascript', node: 'javascript',
  jsonc: 'json', json5: 'json', sh: 'bash', shell: 'bash', zsh: 'bash', console: 'bash', shellsession: 'bash',
  postgres: 'sql', postgresql: 'sql', sqlite: 'sql', mysql: 'sql', psql: 'sql', golang: 'go', rs: 'rust',
  c: 'clike', h: 'clike', cpp: 'clike', 'c++': 'clike', cc: 'clike', hpp: 'clike', cs: 'clike',
  csharp: 'clike', java: 'clike', kotlin: 'clike', kt: 'clike', swift: 'clike', scala: 'clike',
  dart: 'clike', php: 'clike', rb: 'ruby', xml: 'html', svg: 'html', xhtml: 'html', vue: 'html',
  jinja: 'html', django: 'html', scss: 'css', less: 'css', yml: 'yaml', ini: 'toml', cfg: 'toml',
  conf: 'toml', patch: 'diff', docker: 'dockerfile',
};

const compiled = new Map();
function grammar(lang) {
  const name = ALIASES[lang] || lang;
  const rules = Object.hasOwn(LANGUAGES, name) ? LANGUAGES[name] : null;
  if (!rules) return null;
  if (!compiled.has(name)) {
    compiled.set(name, {
      classes: rules.map(([cls]) => `hl-${cls}`),
      regex: new RegExp(rules.map(([, source]) => `(${source})`).join('|'), 'g'),
    });
  }
  return compiled.get(name);
}

// Highlight one <code> element in place, from its text. Unknown languages stay plain.
export function highlightCode(code) {
  const lang = /(?:^|\s)language-(\S+)/.exec(code.className);
  const g = lang && grammar(lang[1].toLowerCase());
  if (!g) return;
  const text = code.textContent;
  const doc = code.ownerDocument;
  const out = doc.createDocumentFragment();
  let last = 0;
  g.regex.lastIndex = 0;
  for (let m = g.regex.exec(text); m; m = g.regex.exec(text)) {
    if (m[0] === '') { g.regex.lastIndex += 1; continue; }
    if (m.index > last) out.append(doc.createTextNode(text.slice(last, m.index)));
    const span = doc.createElement('span');
    span.className = g.classes[m.slice(1).findIndex((group) => group !== undefined)];
    span.textContent = m[0];
    out.append(span);
    last = m.index + m[0].length;
  }
  if (last < text.length) out.append(doc.createTextNode(text.slice(last)));
  code.replaceChildren(out);
  code.classList.add('hl');
}

// Highlight every code block under `root` that is not highlighted yet.
export function highlightWithin(root) {
  for (const code of root.querySelectorAll('pre > code[class*="language-"]:not(.hl)')) highlightCode(code);
}
