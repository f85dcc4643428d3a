/**
 * A schema failure's message on one line: Effect prints it as a tree over
 * several lines, and it goes into an error body a client reads or a log line
 * an operator greps.
 */
export const oneLine = (message: string): string => message.replace(/\s*\n\s*/g, " ")
